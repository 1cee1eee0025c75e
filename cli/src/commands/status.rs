//! `shoal status`: the control plane's health: which scheduler leads, when it last acted,
//! the records it cannot read, and a warning when no scheduler has acted for longer than its
//! lease allows (so a stopped control plane never looks healthy).

use clap::Args;
use shoal_lattice::api::ControlPlaneView;
use shoal_lattice::api::GetControlPlane;

use crate::lattice::LatticeArgs;
use crate::output::{Format, print};

/// Show the control plane's health: the leading scheduler, the age of its last pass, the
/// records it cannot read. Exits 1 (with a warning) when no scheduler has acted for longer
/// than its lease allows.
///
/// Examples: shoal status
///           shoal status -o json
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: Format,
}

pub async fn run(args: StatusArgs, lattice: &LatticeArgs) -> anyhow::Result<u8> {
    let (api, _connection) = lattice.api("shoal status").await?;
    let view: ControlPlaneView = api.call(GetControlPlane {}).await?;
    print(args.output, &view, text)?;
    if let Some(warning) = &view.warning {
        eprintln!("warning: {warning}");
        return Ok(1);
    }
    Ok(0)
}

/// The view for people.
fn text(view: &ControlPlaneView) -> String {
    let Some(status) = &view.status else {
        return "leader      none\n".to_owned();
    };
    let mut out = format!(
        "leader      {}\nlast pass   {}\nlease       {:.1} s\n",
        status.leader,
        ago(view.now, status.pass_at),
        status.lease_ms as f64 / 1000.0
    );
    if status.unreadable.is_empty() {
        out.push_str("unreadable  none\n");
    } else {
        out.push_str(&format!("unreadable  {}\n", status.unreadable.len()));
        for entry in &status.unreadable {
            out.push_str(&format!("  {entry}\n"));
        }
    }
    out
}

/// `0.4 s ago`, or `in the future` when the clocks disagree.
pub fn ago(now: u64, then: u64) -> String {
    if then > now {
        return "just now (clocks differ)".to_owned();
    }
    format!("{:.1} s ago", (now - then) as f64 / 1000.0)
}
