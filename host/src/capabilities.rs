//! What guests may import, registered once: each capability's interfaces and versions, the
//! engine it needs, and how it joins a linker. The linker, the check that names what a
//! component imports and no host provides, and that message's list of what is provided all
//! read this table, so a capability added here is offered, recognised and named together.

use wasmtime::component::Linker;

use crate::guest::GuestState;

/// One capability guests may import.
pub(crate) struct Capability {
    /// For people, in the message naming what is provided.
    pub(crate) name: &'static str,
    /// The interfaces it provides: a package prefix (`wasi:config/`) and the versions
    /// (`0.2`: every `0.2.x` and its drafts and release candidates).
    pub(crate) interfaces: &'static [(&'static str, &'static str)],
    /// Whether it needs the engine with the component model's async ABI (WASI 0.3).
    pub(crate) wasi_03: bool,
    /// Adds its host functions to a linker.
    pub(crate) add: fn(&mut Linker<GuestState>) -> wasmtime::Result<()>,
}

impl Capability {
    /// Whether `import` (`wasi:cli/environment@0.2.6`) is one of this capability's.
    fn provides(&self, import: &str) -> bool {
        let (path, version) = import.split_once('@').unwrap_or((import, ""));
        self.interfaces
            .iter()
            .any(|(prefix, major)| path.starts_with(prefix) && version.starts_with(major))
    }
}

/// Every capability, in the order they join a linker.
pub(crate) const CAPABILITIES: &[Capability] = &[
    Capability {
        name: "WASI 0.2 (cli, clocks, filesystem, io, random, sockets)",
        interfaces: &[
            ("wasi:cli/", "0.2"),
            ("wasi:clocks/", "0.2"),
            ("wasi:filesystem/", "0.2"),
            ("wasi:io/", "0.2"),
            ("wasi:random/", "0.2"),
            ("wasi:sockets/", "0.2"),
        ],
        wasi_03: false,
        add: |linker| wasmtime_wasi::p2::add_to_linker_async(linker),
    },
    Capability {
        name: "wasi:http 0.2",
        interfaces: &[("wasi:http/", "0.2")],
        wasi_03: false,
        add: |linker| wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker),
    },
    Capability {
        name: "wasi:config 0.2 (rc.1 and drafts)",
        interfaces: &[("wasi:config/", "0.2")],
        wasi_03: false,
        add: |linker| crate::config::add_to_linker(linker),
    },
    Capability {
        name: "wasi:keyvalue 0.2 (draft and draft2)",
        interfaces: &[("wasi:keyvalue/", "0.2")],
        wasi_03: false,
        add: |linker| crate::keyvalue::add_to_linker(linker),
    },
    Capability {
        name: "wasi:messaging 0.2 (draft: types, producer, request-reply), wasmcloud:messaging 0.2",
        interfaces: &[
            ("wasi:messaging/types", "0.2"),
            ("wasi:messaging/producer", "0.2"),
            ("wasi:messaging/request-reply", "0.2"),
            ("wasmcloud:messaging/types", "0.2"),
            ("wasmcloud:messaging/consumer", "0.2"),
        ],
        wasi_03: false,
        add: |linker| crate::messaging::add_to_linker(linker),
    },
    Capability {
        name: "WASI 0.3 (cli, clocks, filesystem, random, sockets)",
        interfaces: &[
            ("wasi:cli/", "0.3"),
            ("wasi:clocks/", "0.3"),
            ("wasi:filesystem/", "0.3"),
            ("wasi:random/", "0.3"),
            ("wasi:sockets/", "0.3"),
        ],
        wasi_03: true,
        add: |linker| wasmtime_wasi::p3::add_to_linker(linker),
    },
    Capability {
        name: "wasi:http 0.3",
        interfaces: &[("wasi:http/", "0.3")],
        wasi_03: true,
        add: |linker| wasmtime_wasi_http::p3::add_to_linker(linker),
    },
    Capability {
        name: "spin:variables 3",
        interfaces: &[("spin:variables/", "3.")],
        wasi_03: true,
        add: |linker| crate::spin::add_to_linker(linker),
    },
    Capability {
        name: "spin:key-value 3",
        interfaces: &[("spin:key-value/", "3.")],
        wasi_03: true,
        add: |linker| crate::spin::add_key_value_to_linker(linker),
    },
];

/// The capabilities an engine offers: all, or without WASI 0.3 ones.
pub(crate) fn offered(wasi_03: bool) -> impl Iterator<Item = &'static Capability> {
    CAPABILITIES
        .iter()
        .filter(move |capability| wasi_03 || !capability.wasi_03)
}

/// Of `imports`, those no capability of `offered` provides.
pub(crate) fn missing<'a>(
    imports: impl IntoIterator<Item = &'a str>,
    wasi_03: bool,
) -> Vec<String> {
    imports
        .into_iter()
        .filter(|import| !offered(wasi_03).any(|capability| capability.provides(import)))
        .map(str::to_owned)
        .collect()
}

/// What an engine offers, for people.
pub(crate) fn names(wasi_03: bool) -> Vec<&'static str> {
    offered(wasi_03).map(|capability| capability.name).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imports_are_matched_by_package_and_major_version() {
        let imports = [
            "wasi:cli/environment@0.2.6",
            "wasi:config/store@0.2.0-rc.1",
            "wasi:keyvalue/store@0.2.0-draft2",
            "wasi:http/types@0.3.0-rc-2025-09-16",
            "spin:variables/variables@3.0.0",
            "wasi:keyvalue/store@0.1.0",
            "shoal-fixtures:unsupported/store",
            "wasi:clocks/monotonic-clock@0.3.0",
            "wasi:messaging/request-reply@0.2.0-draft",
            "wasmcloud:messaging/consumer@0.2.0",
        ];
        assert_eq!(
            missing(imports, true),
            [
                "wasi:keyvalue/store@0.1.0",
                "shoal-fixtures:unsupported/store"
            ]
        );
        // An engine without WASI 0.3 does not claim its interfaces.
        assert_eq!(
            missing(imports, false),
            [
                "wasi:http/types@0.3.0-rc-2025-09-16",
                "spin:variables/variables@3.0.0",
                "wasi:keyvalue/store@0.1.0",
                "shoal-fixtures:unsupported/store",
                "wasi:clocks/monotonic-clock@0.3.0",
            ]
        );
        assert!(names(true).len() > names(false).len());
        assert!(
            names(false)
                .iter()
                .any(|name| name.contains("wasi:keyvalue"))
        );
    }
}
