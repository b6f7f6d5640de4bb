//! The web console in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`, installed by `.ci/chromium`), driven over WebDriver:
//! log in, a deactivated processor and its last failure, activate it, a dead
//! letter found by filter, replayed and delivered, a plugin rolled back, and
//! a tenant token that sees only its tenant. Each page's screenshot is saved
//! under `target/console-screenshots/`.

#![allow(clippy::unwrap_used, reason = "a test fails loudly on a failed step")]

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use support::{Backend, Reply, Wharf, eventually};
use wharf_plugin_artifacts as artifacts;

const OPERATOR: &str = "operator-secret";
const WAIT: Duration = Duration::from_secs(20);

fn script() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/chromium")
}

/// Installs Chromium and ChromeDriver if needed; whether they are there.
/// Panics under CI=true when they are not; skips loudly otherwise.
fn chromium_up(test: &str) -> bool {
    let out = std::process::Command::new("bash").arg(script()).output();
    let why = match out {
        Ok(out) if out.status.success() => return true,
        Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
        Err(e) => e.to_string(),
    };
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "Chromium is not available and CI=true: {test} must run ({why})"
    );
    eprintln!(
        "\n!!! SKIPPED {test}: Chromium is not available ({why}); `.ci/chromium` installs it (as root)\n"
    );
    false
}

/// A ChromeDriver on a port of its own, stopped when dropped.
struct Driver {
    process: std::process::Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Driver { process, url }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,1000"]
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("a Chromium session")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Saves a screenshot of the page as `target/console-screenshots/{name}.png`.
async fn screenshot(browser: &Client, name: &str) {
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = browser.screenshot().await.unwrap();
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The text of the first element matching `css`, once `ok` holds for it.
async fn text_when(browser: &Client, css: &str, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(e) = browser.find(Locator::Css(css)).await
            && let Ok(text) = e.text().await
            && ok(&text)
        {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {css} never did; the page says: {}",
            browser
                .find(Locator::Css("body"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The first element matching `css`, once there is one.
async fn element(browser: &Client, css: &str) -> fantoccini::elements::Element {
    browser
        .wait()
        .at_most(WAIT)
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
}

/// Clicks the first element matching `css`; again if the page replaced it
/// between finding and clicking (a list that re-rendered).
async fn click(browser: &Client, css: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        match element(browser, css).await.click().await {
            Ok(()) => return,
            Err(e) if Instant::now() < deadline => {
                eprintln!("clicking {css} again: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("clicking {css}: {e}"),
        }
    }
}

/// Opens the console and types `token` into its login form.
async fn try_token(browser: &Client, admin: std::net::SocketAddr, token: &str) {
    browser
        .goto(&format!("http://{admin}/console"))
        .await
        .unwrap();
    let field = element(browser, "#token").await;
    screenshot(browser, "login").await;
    field.send_keys(token).await.unwrap();
    click(browser, "#login").await;
}

async fn log_in(browser: &Client, admin: std::net::SocketAddr, token: &str) {
    try_token(browser, admin, token).await;
    element(browser, "#processors").await;
}

async fn operator(
    client: &reqwest::Client,
    wharf: &Wharf,
    method: reqwest::Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    let mut request = client
        .request(method, format!("http://{}{path}", wharf.admin))
        .bearer_auth(OPERATOR);
    if let Some(body) = body {
        request = request.body(body);
    }
    let r = request.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_activates_a_processor_replays_a_dead_letter_rolls_back_a_plugin_and_keeps_tenants_apart()
 {
    if !chromium_up("the_console_in_a_real_browser") {
        return;
    }
    let failing = Arc::new(AtomicBool::new(true));
    let switch = failing.clone();
    let backend = Backend::start(move |_, _| {
        if switch.load(Ordering::SeqCst) {
            Reply::status(503).body("{\"error\":\"upstream busy\"}")
        } else {
            Reply::status(200)
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = format!(
        r#"
[stores.orders]
[stores.held]
[stores.dlq]

[[routes]]
path = "/orders"
store = "orders"

[[routes]]
path = "/held"
store = "held"

[processors.orders]
store = "orders"
endpoint = "{url}"
retry_interval = "10ms"
max_redeliveries = 1
dead_letter_store = "dlq"

[processors.billing]
store = "held"
endpoint = "{url}"
retry_interval = "10ms"
max_redeliveries = 1
on_failure = "deactivate"
"#,
        url = backend.url()
    );
    let wharf =
        Wharf::start_with_server(&config, dir.path(), &format!("admin_token = {OPERATOR:?}")).await;
    let client = reqwest::Client::new();

    // A dead letter, and a processor that has deactivated on its head.
    let dead = wharf.accept("/orders", "{\"order\":1}").await;
    wharf.accept("/held", "{\"invoice\":7}").await;
    eventually(WAIT, "the dead letter and the deactivation", || async {
        let (_, dlq) = operator(
            &client,
            &wharf,
            reqwest::Method::GET,
            "/api/v1/stores",
            None,
        )
        .await;
        let (_, procs) = operator(
            &client,
            &wharf,
            reqwest::Method::GET,
            "/api/v1/processors",
            None,
        )
        .await;
        dlq.as_array()
            .unwrap()
            .iter()
            .any(|s| s["name"] == "dlq" && s["depth"] == 1)
            && procs
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "billing" && p["state"] == "deactivated")
    })
    .await;
    // Two versions of a plugin, the second live.
    for file in [artifacts::LOG_RESPONSE, artifacts::JSON_ERROR] {
        let (status, answer) = operator(
            &client,
            &wharf,
            reqwest::Method::PUT,
            "/api/v1/plugins/handler",
            Some(std::fs::read(file).unwrap()),
        )
        .await;
        assert_eq!(status, 201, "{answer}");
    }
    // A tenant of its own, with a token.
    let (status, answer) = operator(
        &client,
        &wharf,
        reqwest::Method::PUT,
        "/api/v1/tenants/acme",
        None,
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let (status, token) = operator(
        &client,
        &wharf,
        reqwest::Method::POST,
        "/api/v1/tenants/acme/tokens",
        Some(
            json!({"name": "console", "role": "admin"})
                .to_string()
                .into_bytes(),
        ),
    )
    .await;
    assert_eq!(status, 201, "{token}");
    let acme = token["secret"].as_str().unwrap().to_owned();

    let driver = Driver::start().await;
    let browser = driver.browser().await;

    // A wrong token is refused; the operator's logs in.
    try_token(&browser, wharf.admin, "not-a-token").await;
    text_when(&browser, "#login-error", "a wrong token refused", |t| {
        t.contains("not accepted")
    })
    .await;
    log_in(&browser, wharf.admin, OPERATOR).await;

    // Overview: the deactivated processor, its last failure; activate it.
    let row = "#processors tr[data-processor=billing]";
    text_when(
        &browser,
        &format!("{row} .state"),
        "billing deactivated",
        |t| t.starts_with("deactivated"),
    )
    .await;
    let failure = text_when(
        &browser,
        &format!("{row} .last-failure"),
        "its last failure",
        |t| !t.is_empty(),
    )
    .await;
    assert!(failure.contains("503"), "{failure}");
    text_when(
        &browser,
        "#stores tr[data-store=dlq] .depth",
        "the dlq depth",
        |t| t == "1",
    )
    .await;
    screenshot(&browser, "overview").await;
    let invoice = |backend: &Backend| {
        backend
            .received()
            .iter()
            .filter(|r| r.text() == "{\"invoice\":7}")
            .count()
    };
    let tried = invoice(&backend);
    failing.store(false, Ordering::SeqCst);
    click(&browser, &format!("{row} .toggle")).await;
    text_when(
        &browser,
        &format!("{row} .state"),
        "billing activated",
        |t| t == "running",
    )
    .await;
    eventually(WAIT, "the held message delivered", || async {
        invoice(&backend) > tried
    })
    .await;

    // Dead letters: find it by filter, look at it, replay it, see it delivered.
    click(&browser, "nav a[href='#dead-letters']").await;
    element(&browser, "#dl-store").await;
    let status = browser.find(Locator::Css("#dl-status")).await.unwrap();
    // A filter that matches nothing lists nothing; 5xx finds it.
    status.send_keys("4xx").await.unwrap();
    click(&browser, "#dl-find").await;
    text_when(&browser, "#status", "nothing is 4xx", |t| t == "0 found").await;
    status.clear().await.unwrap();
    status.send_keys("5xx").await.unwrap();
    click(&browser, "#dl-find").await;
    text_when(&browser, "#status", "one is 5xx", |t| t == "1 found").await;
    click(&browser, &format!("#dl-results tr[data-id='{dead}']")).await;
    let trail = text_when(&browser, "#dl-detail .trail", "the failure trail", |t| {
        t.contains("orders")
    })
    .await;
    assert!(
        trail.contains("503") && trail.contains("upstream busy"),
        "{trail}"
    );
    screenshot(&browser, "dead-letters").await;
    let before = backend.received().len();
    click(&browser, "#dl-replay-one").await;
    let question = text_when(&browser, "#confirm-text", "the confirmation", |t| {
        !t.is_empty()
    })
    .await;
    assert!(question.contains("Replay 1 message"), "{question}");
    click(&browser, "#confirm-yes").await;
    text_when(&browser, "#dl-job", "the replay job", |t| {
        t.contains("succeeded")
    })
    .await;
    eventually(WAIT, "the replayed dead letter delivered", || async {
        backend.received()[before..]
            .iter()
            .any(|r| r.header("idempotency-key") == dead)
    })
    .await;
    let (_, left) = operator(
        &client,
        &wharf,
        reqwest::Method::GET,
        "/api/v1/stores/dlq/messages",
        None,
    )
    .await;
    assert_eq!(left, json!([]));

    // Plugins: roll back to the first version.
    click(&browser, "nav a[href='#plugins']").await;
    text_when(
        &browser,
        "#plugins tr[data-plugin=handler] .live",
        "v2 live",
        |t| t == "2",
    )
    .await;
    screenshot(&browser, "plugins").await;
    click(&browser, "#plugins tr[data-plugin=handler] .rollback").await;
    click(&browser, "#confirm-yes").await;
    text_when(
        &browser,
        "#plugins tr[data-plugin=handler] .live",
        "v1 live",
        |t| t == "1",
    )
    .await;
    let (_, plugin) = operator(
        &client,
        &wharf,
        reqwest::Method::GET,
        "/api/v1/plugins/handler",
        None,
    )
    .await;
    assert_eq!(plugin["live"], 1, "{plugin}");
    // Deploy a component file as a new plugin.
    element(&browser, "#deploy-name")
        .await
        .send_keys("second")
        .await
        .unwrap();
    element(&browser, "#deploy-file")
        .await
        .send_keys(artifacts::JSON_ERROR)
        .await
        .unwrap();
    click(&browser, "#deploy").await;
    text_when(
        &browser,
        "#plugins tr[data-plugin=second] .live",
        "second deployed",
        |t| t == "1",
    )
    .await;

    // Pipeline: the live document and its revisions.
    click(&browser, "nav a[href='#pipeline']").await;
    text_when(&browser, "#pipeline-document", "the live document", |t| {
        t.contains("billing")
    })
    .await;
    screenshot(&browser, "pipeline").await;
    // A dry run of an edited document shows its diff and changes nothing.
    browser
        .execute(
            "const e = document.getElementById('pipeline-edit');
             e.value = e.value.replace('\"max_redeliveries\": 1', '\"max_redeliveries\": 4');",
            vec![],
        )
        .await
        .unwrap();
    click(&browser, "#pipeline-dry-run").await;
    text_when(&browser, "#status", "the dry run", |t| {
        t.starts_with("Dry run")
    })
    .await;
    let diff = text_when(&browser, "#pipeline-diff", "its diff", |t| !t.is_empty()).await;
    assert!(
        diff.contains("orders") || diff.contains("billing"),
        "{diff}"
    );
    let (_, live) = operator(
        &client,
        &wharf,
        reqwest::Method::GET,
        "/api/v1/pipeline",
        None,
    )
    .await;
    assert_eq!(live["revision"], 1, "{live}");

    // A tenant's token sees its tenant only.
    click(&browser, "#logout").await;
    log_in(&browser, wharf.admin, &acme).await;
    let tenants = browser
        .find(Locator::Css("#tenant"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(tenants.trim(), "acme");
    let processors = text_when(&browser, "#processors", "acme's processors", |_| true).await;
    assert!(!processors.contains("billing"), "{processors}");
    let other = browser
        .execute_async(
            "const done = arguments[arguments.length - 1];
             fetch('/api/v1/tenants/default/processors', {headers: {Authorization: 'Bearer ' + arguments[0]}})
               .then(r => done(r.status));",
            vec![json!(acme)],
        )
        .await
        .unwrap();
    assert_eq!(other, json!(404));
    screenshot(&browser, "tenant").await;

    browser.close().await.unwrap();
    wharf.stop().await;
}
