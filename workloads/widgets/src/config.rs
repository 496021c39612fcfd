//! The widgets workload's config section: its three topics. Every service
//! adds it to its command line (the topics' partition counts are the
//! deployment's; every command is keyed by the one shard, so it uses one
//! partition of `widgets.commands` whatever their count).

use clap::Args;

/// The section.
#[derive(Debug, Clone, Args)]
pub struct WidgetsConfig {
    /// Topic of accepted, undecided widget writes (key: the shard, `0`). Written by the command, read by the processor.
    #[arg(long, env = "WIDGETS_COMMANDS_TOPIC", default_value = "widgets.commands")]
    pub widgets_commands_topic: String,
    /// Topic of decided changes with the state after them of each widget touched (key: `<input_offset>:<serial>`). Written by the processor, read by the materializer.
    #[arg(long, env = "WIDGETS_CHANGES_TOPIC", default_value = "widgets.changes")]
    pub widgets_changes_topic: String,
    /// Topic of decisions (key: the request id). Written by the processor, read by the command, which waits on it.
    #[arg(long, env = "WIDGETS_REPLIES_TOPIC", default_value = "widgets.replies")]
    pub widgets_replies_topic: String,
}
