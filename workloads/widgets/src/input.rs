//! The checked values every widget command is made of: a [`Serial`], a
//! [`Name`], the [`Ports`] of a widget and one [`Port`] type. The command
//! service checks them once (a failure is a `400` with [`BadInput`]'s one-line
//! reason, and nothing reaches the log); past that point they are trusted.
//!
//! - serial: 1 to [`MAX_SERIAL_BYTES`] bytes of UTF-8, printable: no control
//!   character (C0, DEL, C1: exactly Unicode's `Cc`, [`char::is_control`]).
//!   Compared byte for byte (no case folding, no normalisation).
//! - name: 0 to [`MAX_NAME_BYTES`] bytes, printable likewise. Empty is
//!   allowed: the rules bound a name's length only, and a name is not unique
//!   nor used to find anything.
//! - ports: 1 to 3 of `P`, `R`, `Q`, in the order given (`"QQ"`, `"P"`,
//!   `"PRR"`); slot *i* of a widget is its *i*-th letter.
//! - port: exactly one of `P`, `R`, `Q` (an association's type).

use std::fmt;

/// Longest serial, in bytes of UTF-8.
pub const MAX_SERIAL_BYTES: usize = 128;
/// Longest name, in bytes of UTF-8.
pub const MAX_NAME_BYTES: usize = 256;
/// Most port slots a widget has.
pub const MAX_PORTS: usize = 3;

/// Why a value was refused: always the client's fault (`400`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BadInput {
    #[error("`serial` is empty")]
    EmptySerial,
    #[error("`serial` is {0} bytes long; the limit is 128")]
    SerialTooLong(usize),
    #[error("`serial` contains a control character")]
    SerialControl,
    #[error("`name` is {0} bytes long; the limit is 256")]
    NameTooLong(usize),
    #[error("`name` contains a control character")]
    NameControl,
    #[error("`ports` is empty; give 1 to 3 of P, R, Q (e.g. \"PRR\")")]
    NoPorts,
    #[error("`ports` has {0} slots; a widget has 1 to 3")]
    TooManyPorts(usize),
    #[error("`ports` may contain only P, R and Q (e.g. \"PRR\")")]
    BadPorts,
    #[error("`port` must be one of P, R, Q")]
    BadPort,
}

/// A widget's serial: unique among live widgets, the key of every command.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(String);

impl Serial {
    /// # Errors
    /// [`BadInput::EmptySerial`], [`BadInput::SerialTooLong`] or [`BadInput::SerialControl`].
    pub fn parse(raw: &str) -> Result<Self, BadInput> {
        Self::check(raw)?;
        Ok(Serial(raw.to_owned()))
    }

    /// [`Serial::parse`] without the copy: a restore checks each stored cell where it lies.
    ///
    /// # Errors
    /// As [`Serial::parse`].
    pub fn check(raw: &str) -> Result<(), BadInput> {
        if raw.is_empty() {
            return Err(BadInput::EmptySerial);
        }
        if raw.len() > MAX_SERIAL_BYTES {
            return Err(BadInput::SerialTooLong(raw.len()));
        }
        if raw.chars().any(char::is_control) {
            return Err(BadInput::SerialControl);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A widget's name: not unique, possibly empty.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    /// # Errors
    /// [`BadInput::NameTooLong`] or [`BadInput::NameControl`].
    pub fn parse(raw: &str) -> Result<Self, BadInput> {
        Self::check(raw)?;
        Ok(Name(raw.to_owned()))
    }

    /// [`Name::parse`] without the copy.
    ///
    /// # Errors
    /// As [`Name::parse`].
    pub fn check(raw: &str) -> Result<(), BadInput> {
        if raw.len() > MAX_NAME_BYTES {
            return Err(BadInput::NameTooLong(raw.len()));
        }
        if raw.chars().any(char::is_control) {
            return Err(BadInput::NameControl);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A slot type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Port {
    P = 0,
    R = 1,
    Q = 2,
}

impl Port {
    pub const ALL: [Port; 3] = [Port::P, Port::R, Port::Q];

    /// # Errors
    /// [`BadInput::BadPort`] unless `raw` is exactly `P`, `R` or `Q`.
    pub fn parse(raw: &str) -> Result<Self, BadInput> {
        match raw {
            "P" => Ok(Port::P),
            "R" => Ok(Port::R),
            "Q" => Ok(Port::Q),
            _ => Err(BadInput::BadPort),
        }
    }

    pub fn letter(self) -> char {
        match self {
            Port::P => 'P',
            Port::R => 'R',
            Port::Q => 'Q',
        }
    }

    fn from_code(code: u8) -> Port {
        match code {
            0 => Port::P,
            1 => Port::R,
            2 => Port::Q,
            _ => unreachable!("Ports holds only codes 0..=2"),
        }
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.letter())
    }
}

/// A widget's 1–3 slot types, fixed at creation, in one byte: the count in
/// bits 6–7 and slot *i*'s [`Port`] code in bits 2*i*..2*i*+1 (the graph
/// holds ten million of them).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ports(u8);

impl Ports {
    /// # Errors
    /// [`BadInput::NoPorts`], [`BadInput::TooManyPorts`] or [`BadInput::BadPorts`].
    pub fn parse(raw: &str) -> Result<Self, BadInput> {
        if raw.is_empty() {
            return Err(BadInput::NoPorts);
        }
        let mut ports = Vec::with_capacity(MAX_PORTS);
        for c in raw.chars() {
            ports.push(match c {
                'P' => Port::P,
                'R' => Port::R,
                'Q' => Port::Q,
                _ => return Err(BadInput::BadPorts),
            });
        }
        Ports::new(&ports).ok_or(BadInput::TooManyPorts(ports.len()))
    }

    /// `None` unless 1 to 3 ports.
    pub fn new(ports: &[Port]) -> Option<Self> {
        if ports.is_empty() || ports.len() > MAX_PORTS {
            return None;
        }
        let mut bits = (ports.len() as u8) << 6;
        for (i, p) in ports.iter().enumerate() {
            bits |= (*p as u8) << (2 * i);
        }
        Some(Ports(bits))
    }

    /// Number of slots, 1 to 3.
    pub fn len(self) -> usize {
        usize::from(self.0 >> 6)
    }

    /// Never: a widget has at least one slot (here for clippy's `len` rule).
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }

    /// Slot `i`'s type. Panics past [`Ports::len`].
    pub fn get(self, i: usize) -> Port {
        assert!(i < self.len(), "slot {i} of {} ports", self.len());
        Port::from_code((self.0 >> (2 * i)) & 0b11)
    }

    pub fn iter(self) -> impl Iterator<Item = Port> {
        (0..self.len()).map(move |i| self.get(i))
    }

    /// Slots of type `port`.
    pub fn count(self, port: Port) -> usize {
        self.iter().filter(|p| *p == port).count()
    }
}

impl fmt::Display for Ports {
    /// As sent: `PRR`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.iter().try_for_each(|p| write!(f, "{p}"))
    }
}

impl fmt::Debug for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Ports({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_are_one_to_128_printable_bytes() {
        assert_eq!(Serial::parse(""), Err(BadInput::EmptySerial));
        assert!(Serial::parse("x").is_ok());
        assert!(Serial::parse(&"é".repeat(64)).is_ok(), "128 bytes, 64 characters");
        assert_eq!(Serial::parse(&"a".repeat(129)), Err(BadInput::SerialTooLong(129)));
        assert!(Serial::parse("SN 1/2 ✓").is_ok(), "spaces, slashes and symbols are printable");
        for control in ["a\u{0}", "\tb", "a\u{7f}", "\u{85}", "\u{9f}z", "new\nline"] {
            assert_eq!(Serial::parse(control), Err(BadInput::SerialControl), "{control:?}");
        }
        assert!(Serial::parse("\u{a0}").is_ok(), "U+00A0 follows C1 and is not a control");
    }

    #[test]
    fn names_are_at_most_256_printable_bytes_and_may_be_empty() {
        assert_eq!(Name::parse("").map(|n| n.into_string()), Ok(String::new()));
        assert!(Name::parse(&"n".repeat(256)).is_ok());
        assert_eq!(Name::parse(&"n".repeat(257)), Err(BadInput::NameTooLong(257)));
        assert_eq!(Name::parse("a\u{1b}[31m"), Err(BadInput::NameControl));
        assert_eq!(Name::parse("\u{80}"), Err(BadInput::NameControl));
    }

    #[test]
    fn ports_are_one_to_three_of_p_r_q_in_order() {
        for ok in ["P", "R", "Q", "QQ", "PRR", "QQQ", "RPQ"] {
            assert_eq!(Ports::parse(ok).expect(ok).to_string(), ok);
        }
        let prr = Ports::parse("PRR").unwrap();
        assert_eq!(
            (prr.len(), prr.get(0), prr.get(2), prr.count(Port::R), prr.count(Port::Q)),
            (3, Port::P, Port::R, 2, 0)
        );
        assert_eq!(Ports::parse(""), Err(BadInput::NoPorts));
        assert_eq!(Ports::parse("PRRQ"), Err(BadInput::TooManyPorts(4)));
        for bad in ["p", "PX", "P R", "PÉ", "P,R"] {
            assert_eq!(Ports::parse(bad), Err(BadInput::BadPorts), "{bad:?}");
        }
    }

    #[test]
    fn a_port_is_exactly_one_letter() {
        assert_eq!(Port::ALL.map(|p| Port::parse(&p.to_string())), [Ok(Port::P), Ok(Port::R), Ok(Port::Q)]);
        for bad in ["", "p", "PP", " P", "X"] {
            assert_eq!(Port::parse(bad), Err(BadInput::BadPort), "{bad:?}");
        }
    }

    #[test]
    fn reasons_are_one_line() {
        let all = [
            BadInput::EmptySerial,
            BadInput::SerialTooLong(200),
            BadInput::SerialControl,
            BadInput::NameTooLong(300),
            BadInput::NameControl,
            BadInput::NoPorts,
            BadInput::TooManyPorts(4),
            BadInput::BadPorts,
            BadInput::BadPort,
        ];
        for r in all {
            assert!(!r.to_string().contains('\n'), "{r}");
        }
    }
}
