//! One module per `shoal` subcommand: its arguments and what it does.

pub mod apply;
pub mod auth;
pub mod build;
pub mod config;
pub mod cordon;
pub mod create;
pub mod dashboard;
pub mod delete;
pub mod describe;
pub mod events;
pub mod get;
pub mod host;
pub mod inspect;
pub mod kv;
pub mod logs;
pub mod new;
pub mod pull;
pub mod push;
pub mod rollout;
pub mod run;
pub mod scale;
pub mod scheduler;
pub mod secret;
pub mod up;
pub mod version;
