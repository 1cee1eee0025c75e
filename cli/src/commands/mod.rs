//! One module per `shoal` subcommand: its arguments and what it does.

pub mod inspect;
pub mod pull;
pub mod push;
pub mod run;
