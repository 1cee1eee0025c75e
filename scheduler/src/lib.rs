//! Shoal's control plane: validates App manifests, keeps revisions, places replicas on
//! hosts, reconciles desired against observed state, detects lost hosts, and holds the
//! leader lease so several schedulers can run and one acts.
//!
//! The pure parts ([`manifest`], [`placement`], [`reconcile`]) know nothing of NATS and are
//! tested on their own; [`controller`] wires them to the lattice.

pub mod api;
pub mod apply;
pub mod autoscale;
pub mod components;
pub mod configs;
pub mod controller;
pub mod cron;
pub mod egress;
pub mod fleet;
pub mod job_store;
pub mod jobs;
pub mod lease;
pub mod manifest;
pub mod placement;
pub mod precompile;
pub mod reconcile;
pub mod secrets;
pub mod trust;
