//! Placement throughput over synthetic lattices of 1,000 and 10,000 hosts: how many replica
//! placements per second the pure placement pipeline makes. `cargo bench -p shoal-scheduler`.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use shoal_lattice::quantity::{Memory, Millicores};
use shoal_lattice::records::Capacity;
use shoal_scheduler::placement::{HostView, Request, Usage, place};

fn hosts(count: usize) -> Vec<HostView<'static>> {
    (0..count)
        .map(|index| HostView {
            id: Cow::Owned(format!("host-{index:05}")),
            labels: Cow::Owned(BTreeMap::from([
                ("zone".to_owned(), format!("zone-{}", index % 10)),
                (
                    "arch".to_owned(),
                    if index % 4 == 0 { "aarch64" } else { "x86_64" }.to_owned(),
                ),
            ])),
            capacity: Capacity {
                memory: Memory(16 << 30),
                cpu: Millicores(8000),
                max_replicas: 200,
            },
            used: Usage {
                memory: (index as u64 % 7) << 30,
                cpu: (index as u32 % 5) * 1000,
                replicas: index as u32 % 50,
            },
            same_app: 0,
            cached: index % 3 == 0,
            draining: index % 97 == 0,
            runs_wasi: true,
        })
        .collect()
}

fn main() {
    for count in [1_000, 10_000] {
        let hosts = hosts(count);
        let request = Request {
            count: 100,
            memory: 64 << 20,
            cpu: 250,
            requires: BTreeMap::from([("arch".to_owned(), "x86_64".to_owned())]),
            spread_by: Some("zone".to_owned()),
            spread_counts: HashMap::new(),
            prefer: None,
            wasi: None,
        };
        // Warm up, then measure whole plans of 100 replicas until a second has passed.
        let _ = place(&hosts, &request);
        let started = Instant::now();
        let mut placed = 0usize;
        while started.elapsed().as_secs_f64() < 1.0 {
            placed += place(&hosts, &request).hosts.len();
        }
        let rate = placed as f64 / started.elapsed().as_secs_f64();
        println!(
            "{count:>6} hosts: {rate:>10.0} placements/s (plans of 100 replicas, spread over 10 zones, arch filter)"
        );
    }
}
