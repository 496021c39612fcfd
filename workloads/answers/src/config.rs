//! The answers workload's config section: its three topics and its gRPC addresses. Every service
//! adds it to its command line (the topics' partition counts are the
//! deployment's: `--events-partitions`, `--aggregates-partitions`).

use std::net::SocketAddr;

use clap::Args;

/// The section.
#[derive(Debug, Clone, Args)]
pub struct AnswersConfig {
    /// Topic of accepted, undecided writes (key: the answer key). Written by the command, read by the processor.
    #[arg(long, env = "ANSWERS_COMMANDS_TOPIC", default_value = "answers.commands")]
    pub answers_commands_topic: String,
    /// Topic of decided changes (key: `<version>:<answer key>`). Written by the processor, read by the materializer.
    #[arg(long, env = "ANSWERS_CHANGES_TOPIC", default_value = "answers.changes")]
    pub answers_changes_topic: String,
    /// Topic of decisions (key: the request id). Written by the processor, read by the command, which waits on it.
    #[arg(long, env = "ANSWERS_REPLIES_TOPIC", default_value = "answers.replies")]
    pub answers_replies_topic: String,
    /// Address of the gRPC write service (`answers.v1.AnswersWrite`), served by the command.
    #[arg(long, env = "ANSWERS_GRPC_COMMAND_ADDR", default_value = "0.0.0.0:5000")]
    pub answers_grpc_command_addr: SocketAddr,
    /// Address of the gRPC read service (`answers.v1.AnswersRead`), served by the query.
    #[arg(long, env = "ANSWERS_GRPC_QUERY_ADDR", default_value = "0.0.0.0:5001")]
    pub answers_grpc_query_addr: SocketAddr,
}
