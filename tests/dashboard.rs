//! End-to-end tests of `shoal dashboard`, through its real page in headless Chromium: live
//! updates without a reload, actions for editors, none for viewers, logs, lost hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::browser::Browser;
use support::eventually;
use support::lattice::{Lattice, Process, hello_manifest};

const PATIENCE: Duration = Duration::from_secs(30);

/// Starts `shoal dashboard` on a free port (with `extra` arguments) and returns it and its
/// URL.
fn dashboard(lattice: &Lattice, extra: &[&str]) -> (Process, String) {
    let mut args = vec!["dashboard", "--listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let process = lattice.spawn(&args, "dashboard", false);
    let url = eventually(PATIENCE, "the dashboard's address", || {
        process
            .log()
            .lines()
            .find_map(|line| line.strip_prefix("dashboard on ").map(str::to_owned))
    });
    (process, url.trim_end_matches('/').to_owned())
}

fn fixtures_app(lattice: &Lattice, replicas: u32, extra: &str) -> String {
    let fixtures = lattice.push_guest("http-fixtures", "1.0");
    hello_manifest("web", &fixtures, replicas, extra).replace("path: /web", "path: /")
}

#[test]
fn the_page_follows_the_lattice_live_and_acts_for_an_editor() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let h1 = lattice.host("h1", &["zone=north"]);
    let mut h2 = lattice.host("h2", &["zone=south"]);
    lattice.apply(&fixtures_app(&lattice, 1, ""));
    lattice.wait_ready("web", 1, PATIENCE);
    let (_dashboard, url) = dashboard(&lattice, &[]);

    let browser = Browser::start();
    browser.goto(&format!("{url}/"));
    let ready = r#"tr[data-app="default/web"] [data-field="ready"]"#;
    browser.wait_text(PATIENCE, ready, |text| text == "1/1");
    // An editor (an open lattice: everyone is an admin) sees the actions.
    assert_eq!(
        browser.count(r#"tr[data-app="default/web"] button[data-action]"#),
        4
    );

    // A scale from the CLI reaches the open page without a reload, within 2 s.
    browser.run("window.loadedOnce = true;");
    lattice.ok(&["scale", "app", "web", "--replicas", "3"]);
    let scaled = Instant::now();
    browser.wait_text(PATIENCE, ready, |text| text.ends_with("/3"));
    let seen_after = scaled.elapsed();
    assert!(
        seen_after < Duration::from_secs(2),
        "the scale showed after {seen_after:?}"
    );
    assert_eq!(
        browser.run("return window.loadedOnce === true;"),
        true,
        "the page reloaded"
    );
    browser.wait_text(PATIENCE, ready, |text| text == "3/3");

    // Scale through the page: the action asks to confirm, then goes to the control API.
    browser.click(r#"tr[data-app="default/web"] button[data-action="scale"]"#);
    browser.run("document.querySelector('#confirm-value').value = '2';");
    browser.click(r#"[data-testid="confirm"]"#);
    eventually(PATIENCE, "the app scaled to 2 by the page", || {
        (lattice.app("web")["spec"]["replicas"] == 2).then_some(())
    });
    browser.wait_text(PATIENCE, ready, |text| text == "2/2");
    // Pause, then resume, the rollout from the page.
    for (action, paused) in [("pause", true), ("resume", false)] {
        browser.click(&format!(
            r#"tr[data-app="default/web"] button[data-action="{action}"]"#
        ));
        browser.click(r#"[data-testid="confirm"]"#);
        eventually(
            PATIENCE,
            &format!("the page to {action} the rollout"),
            || (lattice.app("web")["paused"].as_bool().unwrap_or(false) == paused).then_some(()),
        );
    }

    // A new revision, and the diff between the two on the app's page.
    lattice.apply(&fixtures_app(&lattice, 2, "  env: {COLOUR: blue}\n"));
    browser.goto(&format!("{url}/#/app/default/web"));
    browser.wait_text(PATIENCE, "h2", |text| text.contains("default/web"));
    eventually(PATIENCE, "revision 2 on the page", || {
        browser.goto(&format!("{url}/#/app/default/web"));
        (browser.count("#diff-to option") >= 2).then_some(())
    });
    browser.click("#diff-show");
    browser.wait_text(PATIENCE, "#diff", |text| {
        text.contains("+") && text.contains("COLOUR")
    });

    // Logs stream onto the page as the app writes them, and the filter keeps what matches.
    let front = h1.url.clone().unwrap();
    for n in 0..5 {
        let _ = support::lattice::agent()
            .get(&format!("{front}/print?out=dashboard-line-{n}"))
            .call();
    }
    browser.wait_text(PATIENCE, "#logs", |text| text.contains("dashboard-line-4"));
    browser.run(
        "const f = document.querySelector('#log-filter'); f.value = 'line-3'; f.dispatchEvent(new Event('input', { bubbles: true }));",
    );
    // Waited for, not read once: the page re-renders the list as the filter applies (a
    // single read once found no element mid-render).
    browser.wait_text(PATIENCE, "#logs", |text| {
        text.contains("dashboard-line-3") && !text.contains("dashboard-line-1")
    });
    let _ = support::lattice::agent()
        .get(&format!("{front}/print?out=dashboard-line-3-late"))
        .call();
    browser.wait_text(PATIENCE, "#logs", |text| {
        text.contains("dashboard-line-3-late")
    });

    // The map groups hosts by zone; the events feed has the placements.
    browser.goto(&format!("{url}/#/map"));
    browser.wait_text(PATIENCE, r#"[data-group="south"]"#, |text| {
        text.contains("h2")
    });
    browser.goto(&format!("{url}/#/events"));
    browser.wait_text(PATIENCE, "#events", |text| {
        text.contains("Placed") && text.contains("default/web")
    });

    // The README's picture: SHOAL_DASHBOARD_SCREENSHOT=docs/dashboard.png.
    if let Ok(path) = std::env::var("SHOAL_DASHBOARD_SCREENSHOT") {
        browser.goto(&format!("{url}/#/app/default/web"));
        browser.wait_text(PATIENCE, "#logs", |text| text.contains("dashboard-line"));
        browser.click("#diff-show");
        browser.wait_text(PATIENCE, "#diff", |text| text.contains("COLOUR"));
        std::fs::write(&path, browser.screenshot()).unwrap();
    }

    // A host killed turns lost on the hosts page.
    browser.goto(&format!("{url}/#/hosts"));
    let state = r#"tr[data-host="h2"] [data-field="state"]"#;
    browser.wait_text(PATIENCE, state, |text| text == "ready");
    h2.kill();
    browser.wait_text(PATIENCE, state, |text| text == "lost");
}

#[test]
fn a_viewer_sees_no_actions_and_an_action_posted_anyway_is_refused() {
    let lattice = Lattice::start_secure();
    let _scheduler = lattice.secure_scheduler("3s");
    let _host = lattice.secure_host("h1");
    lattice.apply(&fixtures_app(&lattice, 1, ""));
    lattice.wait_ready("web", 1, PATIENCE);
    let viewer = lattice.mint(&["user", "vera", "--role", "viewer"], "vera");
    let (_dashboard, url) = dashboard(&lattice, &["--nats-creds", viewer.to_str().unwrap()]);

    let browser = Browser::start();
    browser.goto(&format!("{url}/"));
    let ready = r#"tr[data-app="default/web"] [data-field="ready"]"#;
    browser.wait_text(PATIENCE, ready, |text| text == "1/1");
    assert_eq!(browser.text("#who").unwrap(), "as vera");
    assert_eq!(
        browser.count("button[data-action]"),
        0,
        "a viewer has no actions"
    );

    let agent = support::lattice::agent();
    // Posted from the page's origin with the dashboard's header: the control API refuses.
    let answer = agent
        .post(&format!("{url}/api/apps/default/web/scale"))
        .header("x-shoal-dashboard", "1")
        .header("content-type", "application/json")
        .send(r#"{"replicas": 5}"#)
        .unwrap();
    assert_eq!(answer.status(), 403);
    // Without the header (what another site's form could send), refused before the API.
    let answer = agent
        .delete(&format!("{url}/api/apps/default/web"))
        .call()
        .unwrap();
    assert_eq!(answer.status(), 403);
    assert_eq!(lattice.app("web")["spec"]["replicas"], 1);
}

/// One HTTP/1.1 request written by hand, so its Host and Origin are exactly `headers`:
/// the status line's code.
fn raw_request(address: &str, method: &str, path: &str, headers: &[(&str, &str)]) -> u16 {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("Content-Length: 0\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {answer:?}"))
}

#[test]
fn the_dashboard_answers_only_its_own_origin() {
    let lattice = Lattice::start();
    let _scheduler = lattice.scheduler("s1");
    let _host = lattice.host("h1", &[]);
    lattice.apply(&fixtures_app(&lattice, 1, ""));
    lattice.wait_ready("web", 1, PATIENCE);
    let (_dashboard, url) = dashboard(&lattice, &["--allow-host", "shoal.example.org"]);
    let address = url.trim_start_matches("http://");
    let port = address.rsplit_once(':').unwrap().1;
    let foreign = format!("attacker.example:{port}");
    let foreign_origin = format!("http://attacker.example:{port}");
    let own_origin = format!("http://{address}");
    let action = ("x-shoal-dashboard", "1");

    // A page whose name was rebound to this address (DNS rebinding): its Host is its own.
    assert_eq!(
        raw_request(address, "GET", "/api/snapshot", &[("Host", &foreign)]),
        403
    );
    assert_eq!(
        raw_request(
            address,
            "DELETE",
            "/api/apps/default/web",
            &[("Host", &foreign), ("Origin", &foreign_origin), action]
        ),
        403
    );
    // The dashboard's own Host, sent by another site's page.
    assert_eq!(
        raw_request(
            address,
            "DELETE",
            "/api/apps/default/web",
            &[("Host", address), ("Origin", &foreign_origin), action]
        ),
        403
    );
    assert_eq!(
        raw_request(
            address,
            "GET",
            "/api/snapshot",
            &[("Host", address), ("Origin", "null")]
        ),
        403
    );
    // Nothing changed.
    assert_eq!(lattice.app("web")["spec"]["replicas"], 1);

    // Its own names are answered: the address, localhost, a name given with --allow-host.
    for host in [
        address.to_owned(),
        format!("localhost:{port}"),
        "shoal.example.org".to_owned(),
    ] {
        assert_eq!(
            raw_request(address, "GET", "/api/snapshot", &[("Host", &host)]),
            200,
            "{host}"
        );
    }
    assert_eq!(
        raw_request(
            address,
            "GET",
            "/api/snapshot",
            &[("Host", address), ("Origin", &own_origin)]
        ),
        200
    );
}
