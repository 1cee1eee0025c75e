//! The wire form of every verb is what the enum of struct variants it replaced sent, so
//! CLIs and schedulers of either shape understand each other.

use super::*;

/// Requests as the earlier enum wrote them (a `verb` tag beside the fields).
const WIRE: &[&str] = &[
    r#"{"verb":"getJobs","namespace":"team-a"}"#,
    r#"{"verb":"deleteJob","namespace":"team-a","name":"nightly"}"#,
    r#"{"verb":"getCronJobs","namespace":null}"#,
    r#"{"verb":"deleteCronJob","namespace":"team-a","name":"nightly"}"#,
    r#"{"verb":"createJobFrom","namespace":"team-a","cronJob":"nightly","name":"now"}"#,
    r#"{"verb":"delete","namespace":"team-a","name":"web"}"#,
    r#"{"verb":"scale","namespace":"team-a","name":"web","replicas":3}"#,
    r#"{"verb":"undo","namespace":"team-a","name":"web","toRevision":2}"#,
    r#"{"verb":"pause","namespace":"team-a","name":"web","paused":true}"#,
    r#"{"verb":"history","namespace":"team-a","name":"web"}"#,
    r#"{"verb":"getApps","namespace":null}"#,
    r#"{"verb":"getHosts"}"#,
    r#"{"verb":"getControlPlane"}"#,
    r#"{"verb":"egress","range":"10.0.0.0/8","allowed":true}"#,
    r#"{"verb":"getEgress"}"#,
    r#"{"verb":"getReplicas","namespace":"team-a"}"#,
    r#"{"verb":"describeApp","namespace":"team-a","name":"web"}"#,
    r#"{"verb":"cordon","host":"h1","cordoned":false}"#,
    r#"{"verb":"drain","host":"h1"}"#,
    r#"{"verb":"putConfig","namespace":"team-a","name":"settings","data":{"mode":"fast"}}"#,
    r#"{"verb":"getConfigs","namespace":null}"#,
    r#"{"verb":"describeConfig","namespace":"team-a","name":"settings"}"#,
    r#"{"verb":"deleteConfig","namespace":"team-a","name":"settings"}"#,
    r#"{"verb":"secretsKey"}"#,
    r#"{"verb":"putSecret","namespace":"team-a","name":"db","keys":["password"],"sealed":{"sender":"XABC","sealed":"Ym94"}}"#,
    r#"{"verb":"getSecrets","namespace":"team-a"}"#,
    r#"{"verb":"deleteSecret","namespace":"team-a","name":"db"}"#,
    r#"{"verb":"trustKey","namespace":null,"name":"ci","pem":"-----BEGIN PUBLIC KEY-----"}"#,
    r#"{"verb":"untrustKey","namespace":"team-a","name":"sha256:ab"}"#,
    r#"{"verb":"getTrust","namespace":null}"#,
    r#"{"verb":"keyValue","namespace":"team-a","app":"web","store":"cache","op":{"op":"put","key":"k","value":"dg=="}}"#,
    r#"{"verb":"keyValue","namespace":"team-a","app":"web","store":"cache","op":{"op":"list","after":null}}"#,
    r#"{"verb":"applyJobs"}"#,
];

#[test]
fn every_verb_keeps_its_wire_form() {
    for wire in WIRE {
        let request: Request = serde_json::from_str(wire).unwrap_or_else(|error| {
            panic!("{wire}: {error}");
        });
        let written = serde_json::to_value(&request).unwrap();
        let expected: serde_json::Value = serde_json::from_str(wire).unwrap();
        assert_eq!(written, expected, "{wire}");
    }
}

#[test]
fn an_apply_reads_as_before() {
    let wire = r#"{"verb":"apply","apps":[{"namespace":"team-a","name":"web","spec":{"component":"localhost:5000/web:1"},"digest":"sha256:00"}]}"#;
    let Request::Apply(apply) = serde_json::from_str(wire).unwrap() else {
        panic!("not an apply");
    };
    assert_eq!(apply.apps[0].name, "web");
    assert_eq!(apply.apps[0].spec.component, "localhost:5000/web:1");
    assert_eq!(apply.needs(), (Role::Editor, vec!["team-a"]));
}

#[test]
fn a_field_the_verb_does_not_have_is_refused() {
    // A newer CLI's field would otherwise be dropped without a word, the user believing it
    // applied.
    for wire in [
        r#"{"verb":"getApps","namespace":null,"selector":"tier=web"}"#,
        r#"{"verb":"scale","namespace":"a","name":"b","replicas":1,"surge":2}"#,
        r#"{"verb":"getHosts","all":true}"#,
    ] {
        let error = serde_json::from_str::<Request>(wire).unwrap_err();
        assert!(
            error.to_string().contains("unknown field"),
            "{wire}: {error}"
        );
    }
}

#[test]
fn each_verb_names_its_subject_token_and_role() {
    let cases: Vec<(Request, &str, Role)> = vec![
        (
            PauseRollout {
                namespace: "a".into(),
                name: "b".into(),
                paused: false,
            }
            .into(),
            "resume",
            Role::Editor,
        ),
        (
            CordonHost {
                host: "h1".into(),
                cordoned: true,
            }
            .into(),
            "cordon",
            Role::Admin,
        ),
        (
            KeyValue {
                namespace: "a".into(),
                app: "b".into(),
                store: "c".into(),
                op: KeyValueOp::Get { key: "k".into() },
            }
            .into(),
            "kv-read",
            Role::Viewer,
        ),
        (
            KeyValue {
                namespace: "a".into(),
                app: "b".into(),
                store: "c".into(),
                op: KeyValueOp::Delete { key: "k".into() },
            }
            .into(),
            "kv-write",
            Role::Editor,
        ),
        (GetSecretsKey {}.into(), "get", Role::Viewer),
        (
            SetEgress {
                range: "10.0.0.0/8".into(),
                allowed: true,
            }
            .into(),
            "egress",
            Role::Admin,
        ),
    ];
    for (request, verb, role) in cases {
        assert_eq!(request.verb(), verb, "{request:?}");
        assert_eq!(request.needs().0, role, "{request:?}");
    }
}

#[test]
fn only_an_undo_is_never_sent_twice() {
    let undo: Request = UndoRollout {
        namespace: "a".into(),
        name: "b".into(),
        to_revision: None,
    }
    .into();
    assert!(!undo.resend_safe());
    for wire in WIRE {
        let request: Request = serde_json::from_str(wire).unwrap();
        assert_eq!(
            request.resend_safe(),
            !matches!(request, Request::Undo(_)),
            "{wire}"
        );
    }
}

#[test]
fn names_are_checked_with_what_they_name() {
    let bad_job = CreateJobFrom {
        namespace: "team-a".into(),
        cron_job: "Nightly".into(),
        name: "now".into(),
    };
    assert!(
        bad_job
            .check_names()
            .unwrap_err()
            .to_string()
            .contains("cron job name")
    );
    let by_id = UntrustKey {
        namespace: None,
        name: "sha256:ab".into(),
    };
    assert!(by_id.check_names().is_ok());
    let bad_host = DrainHost { host: "h 1".into() };
    assert!(bad_host.check_names().is_err());
    let bad_store = KeyValue {
        namespace: "a".into(),
        app: "b".into(),
        store: "C".into(),
        op: KeyValueOp::List { after: None },
    };
    assert!(
        bad_store
            .check_names()
            .unwrap_err()
            .to_string()
            .contains("store name")
    );
}
