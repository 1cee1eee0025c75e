//! Placement: a pure pipeline from (hosts, what is placed, a request) to a plan.
//!
//! As in Nomad and the Kubernetes scheduler: first filters (draining, WASI version, label selector, memory,
//! CPU, replica count), each rejection recorded with its reason; then scores (spread across
//! `spreadBy` values, fewest replicas of the app on the host, component already cached, least
//! allocated), with the host id as the deterministic tie-break. Usage counts what this plan
//! has already placed, so one pass never over-commits a host.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;

use shoal_lattice::records::Capacity;

/// One host as placement sees it. Borrowed from the host's record where it can be: a
/// placement over 10,000 hosts should not copy 10,000 label maps first.
#[derive(Debug, Clone)]
pub struct HostView<'a> {
    /// Host id.
    pub id: Cow<'a, str>,
    /// Labels.
    pub labels: Cow<'a, BTreeMap<String, String>>,
    /// What it offers.
    pub capacity: Capacity,
    /// What is placed on it already (all apps).
    pub used: Usage,
    /// Replicas of the app being placed that it runs already.
    pub same_app: u32,
    /// Whether it has the app's component cached.
    pub cached: bool,
    /// Whether it is shutting down.
    pub draining: bool,
    /// Whether it runs the WASI version the component needs.
    pub runs_wasi: bool,
}

/// Resources in use on a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Memory reserved, bytes.
    pub memory: u64,
    /// CPU reserved, millicores.
    pub cpu: u32,
    /// Replicas.
    pub replicas: u32,
}

/// What to place.
#[derive(Debug, Clone)]
pub struct Request {
    /// Replicas to place.
    pub count: u32,
    /// Memory each reserves.
    pub memory: u64,
    /// CPU each reserves.
    pub cpu: u32,
    /// Labels a host must have.
    pub requires: BTreeMap<String, String>,
    /// Label to spread across.
    pub spread_by: Option<String>,
    /// Replicas of the app already running per value of the spread label.
    pub spread_counts: HashMap<String, u32>,
    /// A host to take first when it fits and runs no replica of the app: the one that asked
    /// to wake the app, so its held requests are answered there without another hop.
    pub prefer: Option<String>,
    /// The WASI version the component needs, when newer than 0.2 (hosts that do not run it
    /// are filtered out).
    pub wasi: Option<String>,
}

/// Why a host was filtered out.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Rejection {
    /// It is shutting down.
    Draining,
    /// It does not run the WASI version the component needs.
    Wasi(String),
    /// It lacks a required label value.
    Label(String, String),
    /// Not enough free memory.
    Memory,
    /// Not enough free CPU.
    Cpu,
    /// At its replica limit.
    MaxReplicas,
}

impl Rejection {
    /// "1 lacks memory", "2 lack memory".
    fn describe(&self, count: usize) -> String {
        let one = count == 1;
        let lack = if one { "lacks" } else { "lack" };
        let be = if one { "is" } else { "are" };
        match self {
            Rejection::Draining => format!("{count} {be} draining"),
            Rejection::Wasi(version) => {
                let does = if one { "does" } else { "do" };
                format!("{count} {does} not run WASI {version}")
            }
            Rejection::Label(key, value) => format!("{count} {lack} label {key}={value}"),
            Rejection::Memory => format!("{count} {lack} memory"),
            Rejection::Cpu => format!("{count} {lack} CPU"),
            Rejection::MaxReplicas => format!("{count} {be} at max replicas"),
        }
    }
}

/// Why replicas could not be placed: how many hosts each filter rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FitReport {
    /// Hosts considered.
    pub hosts: usize,
    /// Rejections by reason.
    pub rejections: BTreeMap<Rejection, usize>,
}

impl fmt::Display for FitReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.hosts == 0 {
            return f.write_str("no hosts in the lattice");
        }
        let fit = self.hosts - self.rejections.values().sum::<usize>();
        write!(f, "{fit} of {} hosts fit", self.hosts)?;
        let mut separator = ": ";
        for (rejection, count) in &self.rejections {
            write!(f, "{separator}{}", rejection.describe(*count))?;
            separator = ", ";
        }
        Ok(())
    }
}

/// The outcome of placing a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The host of each placed replica, in placement order.
    pub hosts: Vec<String>,
    /// Replicas that fit nowhere.
    pub unplaced: u32,
    /// Why, when some did not fit.
    pub report: Option<FitReport>,
}

/// The filters that do not depend on what this plan places: checked once per host.
fn static_filter(host: &HostView<'_>, request: &Request) -> Result<(), Rejection> {
    if host.draining {
        return Err(Rejection::Draining);
    }
    if !host.runs_wasi {
        return Err(Rejection::Wasi(
            request.wasi.clone().unwrap_or_else(|| "0.2".to_owned()),
        ));
    }
    for (key, value) in &request.requires {
        if host.labels.get(key) != Some(value) {
            return Err(Rejection::Label(key.clone(), value.clone()));
        }
    }
    Ok(())
}

/// The resource filters, checked against usage including this plan's placements.
fn fit(host: &HostView<'_>, request: &Request, used: Usage) -> Result<(), Rejection> {
    if used.memory.saturating_add(request.memory) > host.capacity.memory.0 {
        return Err(Rejection::Memory);
    }
    if used.cpu.saturating_add(request.cpu) > host.capacity.cpu.0 {
        return Err(Rejection::Cpu);
    }
    if used.replicas >= host.capacity.max_replicas {
        return Err(Rejection::MaxReplicas);
    }
    Ok(())
}

/// Per-mille of capacity left free after adding `request`, averaged over memory, CPU and
/// replica slots (dimensions a host does not offer count as full).
fn free_after(host: &HostView<'_>, request: &Request, used: Usage) -> u64 {
    let share = |used: u64, capacity: u64| {
        (capacity.saturating_sub(used) * 1000)
            .checked_div(capacity)
            .unwrap_or(0)
    };
    (share(used.memory + request.memory, host.capacity.memory.0)
        + share(
            u64::from(used.cpu + request.cpu),
            u64::from(host.capacity.cpu.0),
        )
        + share(
            u64::from(used.replicas + 1),
            u64::from(host.capacity.max_replicas),
        ))
        / 3
}

/// A host's score for one replica; lower is better: (not the preferred host, replicas in
/// its spread value, replicas of the app on it, not cached, capacity used after placement).
type Score = (bool, u32, u32, bool, u64);

/// Places `request.count` replicas on `hosts`.
pub fn place(hosts: &[HostView<'_>], request: &Request) -> Plan {
    // Label checks and spread values do not change while planning: work them out once, so
    // each replica costs one pass of integer comparisons over the feasible hosts.
    let mut static_rejections: BTreeMap<Rejection, usize> = BTreeMap::new();
    let mut spread_values: Vec<String> = Vec::new();
    let mut candidates: Vec<(usize, usize)> = Vec::new(); // (host index, spread value index)
    for (index, host) in hosts.iter().enumerate() {
        if let Err(rejection) = static_filter(host, request) {
            *static_rejections.entry(rejection).or_insert(0) += 1;
            continue;
        }
        let value = request
            .spread_by
            .as_ref()
            .and_then(|label| host.labels.get(label))
            .map_or("", String::as_str);
        let value_index = match spread_values.iter().position(|known| known == value) {
            Some(position) => position,
            None => {
                spread_values.push(value.to_owned());
                spread_values.len() - 1
            }
        };
        candidates.push((index, value_index));
    }
    let mut spread: Vec<u32> = spread_values
        .iter()
        .map(|value| request.spread_counts.get(value).copied().unwrap_or(0))
        .collect();
    let mut used: Vec<Usage> = hosts.iter().map(|host| host.used).collect();
    let mut same_app: Vec<u32> = hosts.iter().map(|host| host.same_app).collect();
    let mut placed = Vec::new();
    let mut report = None;
    for _ in 0..request.count {
        let mut best: Option<(usize, usize, Score)> = None;
        for &(index, value) in &candidates {
            if fit(&hosts[index], request, used[index]).is_err() {
                continue;
            }
            // Lower is better throughout; `!cached` so that cached sorts first.
            let score = (
                // Only the first replica there: the rest spread as usual.
                !(same_app[index] == 0
                    && request
                        .prefer
                        .as_ref()
                        .is_some_and(|prefer| *prefer == *hosts[index].id)),
                if request.spread_by.is_some() {
                    spread[value]
                } else {
                    0
                },
                same_app[index],
                !hosts[index].cached,
                u64::MAX - free_after(&hosts[index], request, used[index]),
            );
            // Strictly better only: ties keep the earlier host.
            if best.as_ref().is_none_or(|(_, _, current)| score < *current) {
                best = Some((index, value, score));
            }
        }
        let Some((index, value, _)) = best else {
            let mut rejections = static_rejections.clone();
            for &(index, _) in &candidates {
                if let Err(rejection) = fit(&hosts[index], request, used[index]) {
                    *rejections.entry(rejection).or_insert(0) += 1;
                }
            }
            report = Some(FitReport {
                hosts: hosts.len(),
                rejections,
            });
            break;
        };
        used[index].memory += request.memory;
        used[index].cpu += request.cpu;
        used[index].replicas += 1;
        same_app[index] += 1;
        spread[value] += 1;
        placed.push(hosts[index].id.to_string());
    }
    Plan {
        unplaced: request.count - u32::try_from(placed.len()).unwrap_or(u32::MAX),
        hosts: placed,
        report,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shoal_lattice::quantity::{Memory, Millicores};

    const MI: u64 = 1 << 20;

    fn host(id: &str, labels: &[(&str, &str)], memory_mi: u64) -> HostView<'static> {
        HostView {
            id: Cow::Owned(id.to_owned()),
            labels: Cow::Owned(
                labels
                    .iter()
                    .map(|(key, value)| ((*key).to_owned(), (*value).to_owned()))
                    .collect(),
            ),
            capacity: Capacity {
                memory: Memory(memory_mi * MI),
                cpu: Millicores(4000),
                max_replicas: 100,
            },
            used: Usage::default(),
            same_app: 0,
            cached: false,
            draining: false,
            runs_wasi: true,
        }
    }

    fn request(count: u32, memory_mi: u64) -> Request {
        Request {
            prefer: None,
            wasi: None,
            count,
            memory: memory_mi * MI,
            cpu: 0,
            requires: BTreeMap::new(),
            spread_by: None,
            spread_counts: HashMap::new(),
        }
    }

    #[test]
    fn spreads_one_per_zone() {
        let hosts = [
            host("a1", &[("zone", "a")], 1024),
            host("a2", &[("zone", "a")], 1024),
            host("b1", &[("zone", "b")], 1024),
            host("c1", &[("zone", "c")], 1024),
        ];
        let mut wanted = request(3, 64);
        wanted.spread_by = Some("zone".to_owned());
        let plan = place(&hosts, &wanted);
        let mut zones: Vec<_> = plan.hosts.iter().map(|id| &id[..1]).collect();
        zones.sort();
        assert_eq!(zones, ["a", "b", "c"]);
        assert_eq!(plan.unplaced, 0);
    }

    #[test]
    fn requires_filters_and_the_report_says_why() {
        let hosts = [
            host("h1", &[("zone", "us")], 32),
            host("h2", &[("zone", "us")], 32),
            host("h3", &[("zone", "eu")], 1024),
        ];
        let mut wanted = request(1, 64);
        wanted.requires.insert("zone".into(), "us".into());
        let plan = place(&hosts, &wanted);
        assert_eq!(plan.unplaced, 1);
        assert_eq!(
            plan.report.unwrap().to_string(),
            "0 of 3 hosts fit: 1 lacks label zone=us, 2 lack memory"
        );
        wanted.requires.insert("zone".into(), "eu".into());
        assert_eq!(place(&hosts, &wanted).hosts, ["h3"]);
    }

    #[test]
    fn prefers_hosts_with_fewer_replicas_of_the_app_then_cached_then_free() {
        let mut hosts = [
            host("h1", &[], 1024),
            host("h2", &[], 1024),
            host("h3", &[], 2048),
        ];
        hosts[0].cached = true;
        // h3 has the most room, but h1 has the component cached.
        assert_eq!(place(&hosts, &request(1, 64)).hosts, ["h1"]);
        hosts[0].same_app = 1;
        assert_eq!(place(&hosts, &request(1, 64)).hosts, ["h3"]);
        assert_eq!(place(&hosts, &request(3, 64)).hosts, ["h3", "h2", "h1"]);
    }

    #[test]
    fn the_preferred_host_comes_first_when_it_fits() {
        let mut hosts = [host("h1", &[], 1024), host("h2", &[], 64)];
        hosts[0].cached = true;
        let mut wanted = request(2, 64);
        wanted.prefer = Some("h2".into());
        // h2 first although h1 has the component; the second replica goes by the scores.
        assert_eq!(place(&hosts, &wanted).hosts, ["h2", "h1"]);
        // A preferred host that does not fit is passed over.
        let mut wanted = request(1, 128);
        wanted.prefer = Some("h2".into());
        assert_eq!(place(&hosts, &wanted).hosts, ["h1"]);
    }

    #[test]
    fn a_component_that_needs_wasi_03_goes_only_to_hosts_that_run_it_and_the_report_says_why() {
        let mut old = host("old", &[], 1024);
        old.runs_wasi = false;
        let mut older = host("older", &[], 1024);
        older.runs_wasi = false;
        let new = host("new", &[], 1024);
        let mut needs = request(2, 64);
        needs.wasi = Some("0.3".to_owned());
        let plan = place(&[old.clone(), new.clone()], &needs);
        assert_eq!(plan.hosts, ["new", "new"]);
        let plan = place(&[old, older], &needs);
        assert_eq!(plan.unplaced, 2);
        assert_eq!(
            plan.report.unwrap().to_string(),
            "0 of 2 hosts fit: 2 do not run WASI 0.3"
        );
    }

    #[test]
    fn no_hosts_says_so() {
        let plan = place(&[], &request(2, 64));
        assert_eq!(plan.unplaced, 2);
        assert_eq!(plan.report.unwrap().to_string(), "no hosts in the lattice");
    }

    fn arbitrary_hosts() -> impl Strategy<Value = Vec<HostView<'static>>> {
        prop::collection::vec(
            (0u64..2048, 0u32..4000, 0u32..10, 0usize..3, 0u64..512),
            0..12,
        )
        .prop_map(|specs| {
            specs
                .into_iter()
                .enumerate()
                .map(|(index, (memory, cpu, max, zone, used))| {
                    let mut view = host(
                        &format!("h{index:02}"),
                        &[("zone", ["a", "b", "c"][zone])],
                        memory,
                    );
                    view.capacity.cpu = Millicores(cpu);
                    view.capacity.max_replicas = max;
                    view.used.memory = used.min(memory) * MI;
                    view
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn never_over_commits_and_is_deterministic(
            hosts in arbitrary_hosts(),
            count in 0u32..40,
            memory in 1u64..256,
            cpu in 0u32..1000,
        ) {
            let mut wanted = request(count, memory);
            wanted.cpu = cpu;
            wanted.spread_by = Some("zone".to_owned());
            let plan = place(&hosts, &wanted);
            prop_assert_eq!(&plan, &place(&hosts, &wanted));
            prop_assert_eq!(plan.hosts.len() as u32 + plan.unplaced, count);
            for host in &hosts {
                let placed = plan.hosts.iter().filter(|id| **id == *host.id).count() as u64;
                if placed > 0 {
                    prop_assert!(host.used.memory + placed * wanted.memory <= host.capacity.memory.0);
                    prop_assert!(u64::from(host.used.cpu) + placed * u64::from(cpu) <= u64::from(host.capacity.cpu.0));
                    prop_assert!(placed <= u64::from(host.capacity.max_replicas));
                }
            }
        }

        #[test]
        fn spread_is_as_even_as_capacity_allows(count in 1u32..30) {
            // Three zones of roomy hosts: counts per zone differ by at most one.
            let hosts: Vec<HostView<'static>> = (0..6)
                .map(|index| host(&format!("h{index}"), &[("zone", ["a", "b", "c"][index % 3])], 1 << 16))
                .collect();
            let mut wanted = request(count, 64);
            wanted.spread_by = Some("zone".to_owned());
            let plan = place(&hosts, &wanted);
            let mut per_zone = [0u32; 3];
            for id in &plan.hosts {
                let index: usize = id[1..].parse().unwrap();
                per_zone[index % 3] += 1;
            }
            let (low, high) = (per_zone.iter().min().unwrap(), per_zone.iter().max().unwrap());
            prop_assert!(high - low <= 1, "{:?}", per_zone);
        }
    }
}
