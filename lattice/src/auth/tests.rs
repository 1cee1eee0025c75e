//! The auth module's tests.

use std::collections::BTreeMap;

use data_encoding::BASE64URL_NOPAD;
use nkeys::KeyPair;

use super::*;
use crate::records::Trigger;

/// A JWT's issuer and issue time, once its signature checks.
fn issued(jwt: &str) -> Result<(String, u64), AuthError> {
    let claims: Claims<serde_json::Value> = decode(jwt)?;
    Ok((claims.iss, claims.iat))
}

#[test]
fn a_creds_file_gives_its_jwt_and_seed_and_nothing_else_connects() {
    let user = KeyPair::new_user();
    let seed = user.seed().unwrap();
    let text = creds("header.claims.signature", &seed);
    assert_eq!(creds_jwt(&text), Some("header.claims.signature"));
    assert_eq!(creds_seed(&text), Some(seed.as_str()));
    assert!(connect_options(&text).is_ok());
    // No seed, a seed that is not one, no JWT: each refused with what is wrong.
    let no_seed = text.replace(&seed, "");
    assert!(connect_options(&no_seed).is_err());
    let bad_seed = text.replace(&seed, "SUNOTASEED");
    let error = connect_options(&bad_seed).unwrap_err().to_string();
    assert!(error.contains("seed"), "{error}");
    let error = connect_options("nothing here").unwrap_err().to_string();
    assert!(error.contains("no NATS user JWT"), "{error}");
}

#[test]
fn a_host_grant_is_read_only_from_a_credential_of_this_account_for_that_host() {
    let account = KeyPair::new_account();
    let grant = HostGrant {
        labels: [("zone".to_owned(), "a".to_owned())].into(),
        memory: Some(2 << 30),
        cpu: Some(1500),
        max_replicas: Some(7),
    };
    let mint = |account: &KeyPair, id: &str, grant: HostGrant| {
        identity_jwt(
            account,
            &KeyPair::new_user().public_key(),
            "dev",
            &Identity::Host {
                id: id.to_owned(),
                grant,
            },
            None,
            1,
        )
        .unwrap()
    };
    let jwt = mint(&account, "edge-1", grant.clone());
    assert_eq!(
        host_grant(&jwt, &account.public_key(), "edge-1").unwrap(),
        grant
    );
    // Another host's credential, another account's, a tampered one: refused.
    assert!(host_grant(&jwt, &account.public_key(), "edge-2").is_err());
    let other = KeyPair::new_account();
    let foreign = mint(&other, "edge-1", grant.clone());
    assert!(host_grant(&foreign, &account.public_key(), "edge-1").is_err());
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    let claims = String::from_utf8(BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap())
        .unwrap()
        .replace("shoal-memory:2147483648", "shoal-memory:9999999999999");
    parts[1] = BASE64URL_NOPAD.encode(claims.as_bytes());
    assert!(host_grant(&parts.join("."), &account.public_key(), "edge-1").is_err());
    // A user's credential is not a host's.
    let user = identity_jwt(
        &account,
        &KeyPair::new_user().public_key(),
        "dev",
        &Identity::User {
            name: "edge-1".to_owned(),
            grants: Vec::new(),
        },
        None,
        1,
    )
    .unwrap();
    assert!(host_grant(&user, &account.public_key(), "edge-1").is_err());
}

#[test]
fn a_credential_minted_with_other_permissions_is_not_current() {
    let account = KeyPair::new_account();
    let user = KeyPair::new_user();
    let identity = Identity::Host {
        id: "edge-1".to_owned(),
        grant: HostGrant::default(),
    };
    let jwt = identity_jwt(&account, &user.public_key(), "dev", &identity, None, 1).unwrap();
    let text = creds(&jwt, &user.seed().unwrap());
    let signer = account.public_key();
    assert!(is_current(&text, "dev", &identity, &signer, None));
    assert!(!is_current(&text, "dev", &identity, "AOTHER", None));
    // The same host with a grant, or in another lattice, needs a new one.
    let granted = Identity::Host {
        id: "edge-1".to_owned(),
        grant: HostGrant {
            max_replicas: Some(3),
            ..HostGrant::default()
        },
    };
    assert!(!is_current(&text, "dev", &granted, &signer, None));
    assert!(!is_current(&text, "prod", &identity, &signer, None));
    assert!(!is_current(
        "not a credential",
        "dev",
        &identity,
        &signer,
        None
    ));
}

/// Whether every subject `pattern` matches is matched by `cover` (NATS wildcards).
fn covers(cover: &str, pattern: &str) -> bool {
    let mut wanted = pattern.split('.');
    for token in cover.split('.') {
        match (token, wanted.next()) {
            (">", Some(_)) => return true,
            ("*", Some(next)) if next != ">" => {}
            (token, Some(next)) if token == next => {}
            _ => return false,
        }
    }
    wanted.next().is_none()
}

#[test]
fn every_jetstream_subject_a_client_may_use_crosses_into_the_state_account_once() {
    let shared = shared_subjects("dev");
    let services: Vec<&str> = shared
        .iter()
        .filter_map(|shared| match shared {
            Shared::Service { local, .. } => Some(local.as_str()),
            Shared::Stream { .. } => None,
        })
        .collect();
    let identities = [
        Identity::Host {
            id: "edge-1".to_owned(),
            grant: HostGrant::default(),
        },
        Identity::Site {
            name: "s".to_owned(),
            hosts: vec!["s-1".to_owned()],
            domain: "hub".to_owned(),
        },
        Identity::SiteCopy {
            name: site_copy_name("s"),
        },
        Identity::User {
            name: "alice".to_owned(),
            grants: vec![Grant {
                role: Role::Viewer,
                namespace: Some("team-a".to_owned()),
            }],
        },
    ];
    for identity in &identities {
        for subject in &permissions("dev", identity).publish {
            if subject.starts_with("$JS.") || subject.starts_with("$KV.") {
                let carriers = services
                    .iter()
                    .filter(|local| covers(local, subject))
                    .count();
                assert_eq!(carriers, 1, "{subject} of {identity:?}");
            }
        }
    }
    // The imports are disjoint: no subject is carried twice.
    for (index, one) in services.iter().enumerate() {
        for other in &services[index + 1..] {
            assert!(!covers(one, other) && !covers(other, one), "{one} {other}");
        }
    }
    // The scheduler uses the state account's JetStream as it is.
    let scheduler = permissions(
        "dev",
        &Identity::Scheduler {
            name: "s1".to_owned(),
        },
    );
    assert!(scheduler.publish.contains(&"$JS.API.>".to_owned()));
}

#[test]
fn account_jwts_share_what_clients_use_and_nothing_else() {
    let operator = KeyPair::new_operator();
    let state = KeyPair::new_account().public_key();
    let clients = KeyPair::new_account().public_key();
    let none = BTreeMap::new();
    let claims = |jwt: String| decode::<AccountNats>(&jwt).unwrap().nats;
    let exported = claims(
        account_jwt(
            &operator,
            &state,
            "dev",
            AccountKind::State {
                clients: Some(&clients),
            },
            "dev",
            &none,
            1,
        )
        .unwrap(),
    );
    assert_eq!(exported.exports.len(), shared_subjects("dev").len());
    // It imports the clients' messages, for the streams of JetStream triggers.
    assert_eq!(exported.imports.len(), 1);
    assert_eq!(exported.imports[0].subject, "shoal.dev.v1.msg.>");
    assert_eq!(exported.imports[0].account, clients);
    assert_eq!(exported.imports[0].kind, "stream");
    assert_eq!(exported.limits.streams, Some(-1));
    let imported = claims(
        account_jwt(
            &operator,
            &clients,
            "dev-clients",
            AccountKind::Clients {
                state: Some(&state),
                store_signer: Some("ASIGNER"),
            },
            "dev",
            &none,
            1,
        )
        .unwrap(),
    );
    assert_eq!(imported.exports.len(), 1);
    assert_eq!(imported.exports[0].subject, "shoal.dev.v1.msg.>");
    assert_eq!(imported.signing_keys, ["ASIGNER"]);
    assert_eq!(imported.limits.streams, None, "no JetStream of its own");
    assert!(
        imported
            .imports
            .iter()
            .all(|import| import.account == state)
    );
    assert!(imported.imports.iter().any(|import| {
        import.subject == "$KV.>"
            && import.local_subject.as_deref() == Some("$JS.shoal-state.API.$KV.>")
    }));
    let leaf = claims(
        account_jwt(
            &operator,
            &clients,
            "dev-clients",
            AccountKind::Clients {
                state: None,
                store_signer: Some("ASIGNER"),
            },
            "dev",
            &none,
            1,
        )
        .unwrap(),
    );
    assert!(leaf.imports.is_empty());
    // A site's copy of the components: JetStream of its size, sharing nothing.
    let copy = KeyPair::new_account().public_key();
    let keeping = claims(
        account_jwt(
            &operator,
            &copy,
            "dev-site-copy",
            AccountKind::SiteCopy { max_bytes: 1 << 30 },
            "dev",
            &none,
            1,
        )
        .unwrap(),
    );
    assert_eq!(keeping.limits.disk_storage, Some(1 << 30));
    assert_eq!(keeping.limits.streams, Some(1));
    assert_eq!(keeping.limits.mem_storage, Some(0));
    assert!(keeping.imports.is_empty() && keeping.exports.is_empty());
    // Its keeper makes the copy and its readers read it, nothing else.
    let only_the_copy = |permissions: Permissions, calls: &[&str]| {
        permissions.publish.iter().all(|subject| {
            calls.iter().any(|call| {
                subject.starts_with(&format!("$JS.API.{call}.OBJ_shoal-dev-v1-components"))
            })
        })
    };
    assert!(only_the_copy(
        site_copy_keeper("dev"),
        &["STREAM.CREATE", "STREAM.UPDATE", "STREAM.INFO"]
    ));
    assert!(only_the_copy(site_copy_reader("dev"), &["DIRECT.GET"]));
}

#[test]
fn a_store_credential_reaches_its_app_s_stores_only_until_it_expires() {
    let signer = StoreSigner::from_seed(&KeyPair::new_account().seed().unwrap()).unwrap();
    assert!(StoreSigner::from_seed(&KeyPair::new_user().seed().unwrap()).is_err());
    let clients = KeyPair::new_account().public_key();
    let stores = ["cache".to_owned(), "sessions".to_owned()];
    let publish = ["alerts.>".to_owned()];
    let text = store_credential(
        &signer,
        &clients,
        "dev",
        "edge-1",
        AppGrants {
            namespace: "team-a",
            app: "shop",
            stores: &stores,
            publish: &publish,
            triggers: &[
                Trigger::core("orders.*"),
                Trigger {
                    stream: Some("payments".to_owned()),
                    consumer: Some("billing".to_owned()),
                    dead_letter: Some("payments.dead".to_owned()),
                    ..Trigger::default()
                },
            ],
        },
        100,
        3700,
    )
    .unwrap();
    let jwt = creds_jwt(&text).unwrap();
    let claims: Claims<UserNats> = decode(jwt).unwrap();
    assert_eq!(claims.iss, signer.public_key());
    assert_eq!(
        claims.nats.issuer_account.as_deref(),
        Some(clients.as_str())
    );
    assert_eq!(claims.exp, Some(3700));
    assert_eq!(holder(&text).unwrap().kind, STORES_KIND);
    let publish = &claims.nats.publish.allow;
    for store in &stores {
        let bucket = format!("shoal-dev-v1-kv_team-a_shop_{store}");
        assert!(publish.contains(&format!("$JS.shoal-state.API.$KV.{bucket}.=kv.>")));
        assert!(publish.contains(&format!(
            "$JS.shoal-state.API.DIRECT.GET.KV_{bucket}.$KV.{bucket}.=kv.>"
        )));
    }
    // The subjects it may publish to, under its namespace, and its JetStream trigger's
    // dead-letter subject.
    assert!(publish.contains(&"shoal.dev.v1.msg.team-a.alerts.>".to_owned()));
    assert!(publish.contains(&"shoal.dev.v1.msg.team-a.payments.dead".to_owned()));
    // Its JetStream trigger's consumer: info, next messages, acks; no other consumer.
    let stream = "shoal-dev-v1-msg_team-a_payments";
    for call in [
        format!("$JS.shoal-state.API.CONSUMER.INFO.{stream}.shop_billing"),
        format!("$JS.shoal-state.API.CONSUMER.MSG.NEXT.{stream}.shop_billing"),
        format!("$JS.ACK.{stream}.shop_billing.>"),
    ] {
        assert!(publish.contains(&call), "{call}");
    }
    // Answers to requests among its core triggers' messages, on people's and apps'
    // inboxes, never a host's or a scheduler's.
    assert!(publish.contains(&"_INBOX.user.*.>".to_owned()));
    assert!(publish.contains(&"_INBOX.stores.*.>".to_owned()));
    // Nothing else: no other app's store or consumer, no bucket of the lattice's own.
    assert_eq!(publish.len(), 13, "{publish:?}");
    assert!(
        publish
            .iter()
            .all(|subject| subject.contains("_team-a_shop_")
                || subject.contains("_team-a_payments.shop_billing")
                || subject.starts_with("shoal.dev.v1.msg.team-a.")
                || subject.starts_with("_INBOX."))
    );
    let [inbox, trigger] = claims.nats.subscribe.allow.as_slice() else {
        panic!("one inbox and a trigger: {:?}", claims.nats.subscribe.allow);
    };
    // Its triggers only in its own app's queue group.
    assert_eq!(trigger, "shoal.dev.v1.msg.team-a.orders.* team-a.shop");
    assert!(inbox.starts_with("_INBOX.stores.edge-1.") && inbox.ends_with(".>"));
    assert!(
        holder(&text)
            .unwrap()
            .inbox_prefix
            .is_some_and(|prefix| inbox.starts_with(&prefix))
    );
    // A host's own credential reaches no store.
    let host = permissions(
        "dev",
        &Identity::Host {
            id: "edge-1".to_owned(),
            grant: HostGrant::default(),
        },
    );
    assert!(!host.publish.iter().any(|subject| subject.contains("=kv")));
    assert!(
        !host
            .publish
            .iter()
            .any(|subject| subject.ends_with("STREAM.INFO.*"))
    );
    // Each subject it uses crosses into the state account.
    let services: Vec<String> = shared_subjects("dev")
        .into_iter()
        .filter_map(|shared| match shared {
            Shared::Service { local, .. } => Some(local),
            Shared::Stream { .. } => None,
        })
        .collect();
    // (Messages and answers stay in the clients' account, where their subscribers are.)
    for subject in publish
        .iter()
        .filter(|subject| !subject.contains(".msg.") && !subject.starts_with("_INBOX."))
    {
        assert!(
            services.iter().any(|local| covers(local, subject)),
            "{subject}"
        );
    }
}

#[test]
fn a_credential_that_allows_nothing_of_a_kind_denies_all_of_it() {
    // An app granted nothing to publish (no subjects, stores, consumers or answers). A JWT
    // without an allow list would let it publish anything.
    let signer = StoreSigner::generate();
    let text = store_credential(
        &signer,
        "ACLIENTS",
        "dev",
        "edge-1",
        AppGrants {
            namespace: "team-a",
            app: "shop",
            stores: &[],
            publish: &[],
            triggers: &[],
        },
        100,
        3700,
    )
    .unwrap();
    let claims: Claims<UserNats> = decode(creds_jwt(&text).unwrap()).unwrap();
    assert!(claims.nats.publish.allow.is_empty());
    assert_eq!(claims.nats.publish.deny, [">"]);
    assert!(claims.nats.subscribe.deny.is_empty());
    // A lattice-wide admin hears apps' messages; a namespace's people do not (a subscriber
    // could join an app's queue group and take its messages).
    let person = |role: Role, namespace: Option<&str>| {
        permissions(
            "dev",
            &Identity::User {
                name: "alice".to_owned(),
                grants: vec![Grant {
                    role,
                    namespace: namespace.map(str::to_owned),
                }],
            },
        )
    };
    let admin = person(Role::Admin, None);
    assert!(admin.subscribe.contains(&"shoal.dev.v1.msg.*.>".to_owned()));
    // Editors publish in their namespaces; viewers do not.
    assert!(
        person(Role::Editor, Some("team-a"))
            .publish
            .contains(&"shoal.dev.v1.msg.team-a.>".to_owned())
    );
    assert!(
        !person(Role::Viewer, Some("team-a"))
            .publish
            .iter()
            .any(|subject| subject.contains(".msg."))
    );
    for (role, namespace) in [
        (Role::Viewer, Some("team-a")),
        (Role::Admin, Some("team-a")),
        (Role::Viewer, None),
    ] {
        let person = person(role, namespace);
        assert!(
            !person
                .subscribe
                .iter()
                .any(|subject| subject.contains(".msg.")),
            "{role:?} {namespace:?}"
        );
    }
}

#[test]
fn a_scheduler_s_credential_names_the_clients_account() {
    let state = KeyPair::new_account();
    let clients = KeyPair::new_account().public_key();
    let user = KeyPair::new_user();
    let identity = Identity::Scheduler {
        name: "s1".to_owned(),
    };
    let jwt = identity_jwt(
        &state,
        &user.public_key(),
        "dev",
        &identity,
        Some(&clients),
        1,
    )
    .unwrap();
    let text = creds(&jwt, &user.seed().unwrap());
    let holder = holder(&text).unwrap();
    assert_eq!(holder.issuer, state.public_key());
    assert_eq!(holder.clients_account, Some(clients.clone()));
    assert!(is_current(
        &text,
        "dev",
        &identity,
        &state.public_key(),
        Some(&clients)
    ));
    assert!(!is_current(
        &text,
        "dev",
        &identity,
        &clients,
        Some(&clients)
    ));
}

#[test]
fn only_a_reply_subject_nats_server_made_for_an_import_counts_as_one() {
    assert!(is_import_reply("_R_.abc.def"));
    for reply in [
        "_R_",
        "_R_.",
        "_R_.>",
        "_R_.a.*",
        "_INBOX.user.a.b",
        "$KV.x._R_.a",
    ] {
        assert!(!is_import_reply(reply), "{reply}");
    }
}

#[test]
fn answers_go_only_to_the_requester_s_own_inboxes() {
    assert!(is_inbox_of(
        "_INBOX.user.alice.abc123",
        "user",
        Some("alice")
    ));
    assert!(is_inbox_of(
        "_INBOX.user.alice.abc.1",
        "user",
        Some("alice")
    ));
    assert!(is_inbox_of("_INBOX.host.edge-1.x", "host", None));
    for (reply, kind, name) in [
        (
            "$KV.shoal-default-v1-leases.scheduler",
            "user",
            Some("alice"),
        ),
        (
            "$JS.API.STREAM.PURGE.KV_shoal-default-v1-apps",
            "host",
            None,
        ),
        ("_INBOX.user.bob.abc", "user", Some("alice")),
        ("_INBOX.host.alice.abc", "user", Some("alice")),
        ("_INBOX.user.alice", "user", Some("alice")),
        ("_INBOX.user.alice.", "user", Some("alice")),
        ("_INBOX.user.alice.*", "user", Some("alice")),
        ("_INBOX.user.alice.>", "user", Some("alice")),
        ("_INBOX.user.alice..x", "user", Some("alice")),
        ("_INBOX.user.alice.a b", "user", Some("alice")),
        ("_INBOX.abcdef", "host", None),
        ("", "user", None),
    ] {
        assert!(!is_inbox_of(reply, kind, name), "{reply}");
    }
}

#[test]
fn a_minted_credential_reads_back_its_holder() {
    let account = KeyPair::new_account();
    let user = KeyPair::new_user();
    let identity = Identity::User {
        name: "alice".to_owned(),
        grants: vec![
            Grant {
                role: Role::Editor,
                namespace: Some("team-a".to_owned()),
            },
            Grant {
                role: Role::Viewer,
                namespace: None,
            },
        ],
    };
    let jwt = identity_jwt(&account, &user.public_key(), "dev", &identity, None, 1).unwrap();
    let text = creds(&jwt, &user.seed().unwrap());
    let holder = holder(&text).unwrap();
    assert_eq!(holder.name, "alice");
    assert_eq!(holder.kind, "user");
    assert_eq!(holder.inbox_prefix.as_deref(), Some("_INBOX.user.alice"));
    let Identity::User { grants, .. } = identity else {
        unreachable!()
    };
    assert_eq!(holder.grants, grants);
    assert_eq!(issued(&jwt).unwrap(), (account.public_key(), 1));
}

#[test]
fn a_tampered_jwt_is_refused() {
    let account = KeyPair::new_account();
    let identity = Identity::Host {
        id: "edge-1".to_owned(),
        grant: HostGrant::default(),
    };
    let jwt = identity_jwt(
        &account,
        &KeyPair::new_user().public_key(),
        "dev",
        &identity,
        None,
        1,
    )
    .unwrap();
    let mut parts: Vec<String> = jwt.split('.').map(str::to_owned).collect();
    let claims = String::from_utf8(BASE64URL_NOPAD.decode(parts[1].as_bytes()).unwrap())
        .unwrap()
        .replace("edge-1", "edge-2");
    parts[1] = BASE64URL_NOPAD.encode(claims.as_bytes());
    assert!(issued(&parts.join(".")).is_err());
}

#[test]
fn a_host_may_write_only_its_own_records_and_hear_only_its_own_requests() {
    let permissions = permissions(
        "dev",
        &Identity::Host {
            id: "edge-1".to_owned(),
            grant: HostGrant::default(),
        },
    );
    assert!(
        permissions
            .publish
            .contains(&"$JS.shoal-state.API.$KV.shoal-dev-v1-hosts.edge-1".to_owned())
    );
    assert!(
        permissions
            .publish
            .contains(&"$JS.shoal-state.API.$KV.shoal-dev-v1-status.replicas.edge-1.*".to_owned())
    );
    // Writes are publishes on `$KV.…` (under the state's prefix); reads name their
    // filter inside a consumer subject. Nothing under the state account's own names.
    assert!(!permissions.publish.iter().any(|subject| {
        subject.starts_with("$KV.")
            || subject.starts_with("$JS.API.")
            || subject.starts_with("$JS.shoal-state.API.$KV.shoal-dev-v1-apps")
            || subject.starts_with("$JS.shoal-state.API.$KV.shoal-dev-v1-assignments")
            || subject.contains("STREAM.CREATE")
            || subject.contains("v1-apps.")
    }));
    assert!(
        permissions
            .subscribe
            .contains(&"shoal.dev.v1.http.edge-1.>".to_owned())
    );
    assert!(
        !permissions
            .subscribe
            .iter()
            .any(|s| s == "shoal.dev.v1.http.>")
    );
}

#[test]
fn a_site_may_do_what_its_hosts_may_and_nothing_more() {
    let site = permissions(
        "dev",
        &Identity::Site {
            name: "store-12".to_owned(),
            hosts: vec!["store-12-1".to_owned(), "store-12-2".to_owned()],
            domain: "hub".to_owned(),
        },
    );
    for id in ["store-12-1", "store-12-2"] {
        let host = permissions(
            "dev",
            &Identity::Host {
                id: id.to_owned(),
                grant: HostGrant::default(),
            },
        );
        // Every host subject.
        for subject in &host.publish {
            assert!(site.publish.contains(subject), "{subject}");
        }
        for subject in &host.subscribe {
            assert!(site.subscribe.contains(subject), "{subject}");
        }
        assert!(
            site.publish
                .contains(&format!("$JS.shoal-state.API.$KV.shoal-dev-v1-hosts.{id}"))
        );
        assert!(site.publish.contains(&format!(
            "$JS.shoal-state.API.DIRECT.GET.KV_shoal-dev-v1-hosts.$KV.shoal-dev-v1-hosts.{id}"
        )));
    }
    // Not another host's record, nor its requests.
    assert!(
        !site
            .publish
            .iter()
            .any(|subject| subject.contains("hosts.edge-1"))
    );
    assert!(
        !site
            .subscribe
            .iter()
            .any(|subject| subject.contains("edge-1"))
    );
    // Answers to forwarded requests only to hosts' inboxes.
    assert!(site.publish.contains(&"_INBOX.host.*.>".to_owned()));
    // The copy's leaf connection may mirror the components bucket and nothing else.
    let copy = permissions(
        "dev",
        &Identity::SiteCopy {
            name: site_copy_name("store-12"),
        },
    );
    assert_eq!(
        copy.publish,
        [
            "$JS.FC.OBJ_shoal-dev-v1-components.>",
            "$JS.shoal-state.API.CONSUMER.CREATE.OBJ_shoal-dev-v1-components"
        ]
    );
    assert_eq!(
        copy.subscribe,
        ["$JSC.R.>", "_INBOX.site-copy.store-12-copy.>"]
    );
    assert_eq!(copy.connection_types, ["LEAFNODE"]);
}

#[test]
fn grants_allow_their_scope_and_lower_roles() {
    let editor = Grant {
        role: Role::Editor,
        namespace: Some("team-a".to_owned()),
    };
    assert!(editor.allows(Role::Viewer, Some("team-a")));
    assert!(editor.allows(Role::Editor, Some("team-a")));
    assert!(!editor.allows(Role::Admin, Some("team-a")));
    assert!(!editor.allows(Role::Viewer, Some("team-b")));
    assert!(!editor.allows(Role::Viewer, None));
    let admin = Grant {
        role: Role::Admin,
        namespace: None,
    };
    assert!(admin.allows(Role::Editor, Some("team-b")));
    assert_eq!(editor.to_string(), "editor in team-a");
    assert_eq!(
        api_subject("dev", &editor, "alice", "apply"),
        "shoal.dev.v1.api.editor.team-a.alice.apply"
    );
}
