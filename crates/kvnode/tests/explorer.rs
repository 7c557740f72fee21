//! The causality explorer (`/ui`) in a real browser, and its proxy.
//!
//! `scenario_2_from_the_page` starts a cluster of three nodes (trace and fault
//! hook on), opens node1's `/ui` in Debian's headless `chromium`, produces the
//! prototype's scenario 2 with the page's own controls (the link buttons, the
//! write and read forms), and checks the diagram: node3 buffers node2's write,
//! with the arrow of the batch that brought it, then delivers it from the
//! buffer once node1's write arrives. It saves a screenshot in
//! `target/explorer/scenario2.png`, and in `docs/explorer.png` (the README's)
//! with `UPDATE_SCREENSHOT=1`.
//!
//! Without chromium the test fails and says how to install it
//! (`apt-get install chromium`), unless `KVNODE_SKIP_BROWSER_TEST=1`.
//! `CHROMIUM=/path/to/chrome` picks another browser.
//!
//! The driver is the `headless_chrome` crate, not fantoccini: it speaks the
//! DevTools protocol to the browser it starts, so the test needs one package,
//! chromium, and no chromedriver whose version must match the browser's and
//! whose process must be managed too; its blocking API needs no async runtime
//! in the test. Its costs: compiling the protocol's generated types (once), and
//! up to 100 ms per DevTools call (its socket read timeout), so the test drives
//! the page with few calls (clicks at an element's middle found by script) and
//! takes about 20 s. It is built with its `offline` feature only: the protocol
//! comes from the crate itself, and without `fetch` it cannot download a
//! browser.
//!
//! Every wait polls the page's DOM until a condition holds, with a deadline;
//! no step sleeps for a fixed time.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use headless_chrome::browser::tab::point::Point;
use headless_chrome::protocol::cdp::types::Event;
use headless_chrome::protocol::cdp::Page::CaptureScreenshotFormatOption;
use headless_chrome::{Browser, LaunchOptions, Tab};
use serde_json::{json, Value};

use common::{get, post, request, TestCluster};

/// How long the page may take to show what a step caused.
const PAGE_DEADLINE: Duration = Duration::from_secs(20);
/// How often the page's DOM is polled while waiting.
const PAGE_POLL: Duration = Duration::from_millis(50);
/// The browser window, which is also the screenshot's size.
const WINDOW: (u32, u32) = (1440, 1080);

/// The browser to run, or `None` when there is none.
fn chromium() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let paths = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&paths)
        .chain([PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("chromium"))
        .find(|path| path.is_file())
}

/// `target/explorer`, where the test keeps its screenshots.
fn artefacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory")
        .join("explorer");
    std::fs::create_dir_all(&dir).expect("target/explorer can be created");
    dir
}

/// A page in a headless browser, with what the test needs to drive it.
struct Page {
    // Kept alive for the tab; the browser process ends when it is dropped.
    _browser: Browser,
    tab: Arc<Tab>,
    /// Uncaught exceptions of the page's scripts.
    errors: Arc<Mutex<Vec<String>>>,
}

impl Page {
    fn open(browser_path: PathBuf, url: &str) -> Self {
        let options = LaunchOptions {
            path: Some(browser_path.clone()),
            headless: true,
            // CI runs as root, where chromium's sandbox cannot start.
            sandbox: false,
            window_size: Some(WINDOW),
            idle_browser_timeout: Duration::from_secs(120),
            args: vec![
                "--disable-dev-shm-usage".as_ref(),
                "--hide-scrollbars".as_ref(),
                "--force-device-scale-factor=1".as_ref(),
            ],
            ..LaunchOptions::default()
        };
        let browser = Browser::new(options).unwrap_or_else(|e| {
            panic!("cannot start {}: {e:#}", browser_path.display());
        });
        let tab = browser.new_tab().expect("a browser tab");
        let errors = Arc::new(Mutex::new(Vec::new()));
        tab.enable_runtime().expect("the runtime domain");
        let seen = errors.clone();
        tab.add_event_listener(Arc::new(move |event: &Event| {
            if let Event::RuntimeExceptionThrown(thrown) = event {
                let details = &thrown.params.exception_details;
                let description = details
                    .exception
                    .as_ref()
                    .and_then(|e| e.description.clone())
                    .unwrap_or_else(|| details.text.clone());
                seen.lock().unwrap().push(description);
            }
        }))
        .expect("an event listener");
        // Not wait_until_navigated: it waits for the network to be almost
        // idle, and the page keeps a stream open per node. Callers wait for
        // the page's own readiness instead.
        tab.navigate_to(url)
            .unwrap_or_else(|e| panic!("cannot load {url}: {e:#}"));
        Self {
            _browser: browser,
            tab,
            errors,
        }
    }

    /// Evaluates a JavaScript expression; an exception becomes `Err`.
    fn eval(&self, expression: &str) -> Result<Value, String> {
        let wrapped = format!(
            "(() => {{ try {{ return JSON.stringify({{ok: ({expression})}}); }} \
             catch (e) {{ return JSON.stringify({{error: String(e)}}); }} }})()"
        );
        let object = self
            .tab
            .evaluate(&wrapped, false)
            .map_err(|e| format!("{e:#}"))?;
        let text = object
            .value
            .as_ref()
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no value: {object:?}"))?;
        let answer: Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        match answer.get("error") {
            Some(error) => Err(format!("{expression}: {error}")),
            None => Ok(answer.get("ok").cloned().unwrap_or(Value::Null)),
        }
    }

    /// Polls `expression` until it is true; on timeout, panics with `what`,
    /// the page's state and a screenshot.
    fn wait(&self, what: &str, expression: &str) {
        let begun = Instant::now();
        let deadline = begun + PAGE_DEADLINE;
        loop {
            let last = match self.eval(expression) {
                Ok(Value::Bool(true)) => {
                    eprintln!("{:>8.2?} {what}", begun.elapsed());
                    return;
                }
                Ok(other) => other.to_string(),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                self.fail(&format!(
                    "timed out after {PAGE_DEADLINE:?} waiting for {what} ({expression}); last: {last}"
                ));
            }
            std::thread::sleep(PAGE_POLL);
        }
    }

    /// Panics with `message`, what the page shows and a screenshot.
    fn fail(&self, message: &str) -> ! {
        let shot = artefacts().join("failure.png");
        let saved = self
            .screenshot()
            .map(|png| std::fs::write(&shot, png))
            .map_or("not taken".to_string(), |_| shot.display().to_string());
        let state = self
            .eval(
                "({streams: document.querySelector('#streams').textContent, \
                  notices: document.querySelector('#notices').textContent, \
                  answers: [...document.querySelectorAll('#results li')].map(li => li.textContent), \
                  events: [...document.querySelectorAll('circle.ev')].map(c => \
                    `${c.dataset.node}#${c.dataset.id} ${c.dataset.kind} ${c.dataset.dot || c.dataset.dots || ''}`)})",
            )
            .unwrap_or_else(Value::String);
        panic!(
            "{message}\npage: {state:#}\nscript errors: {:?}\nscreenshot: {saved}",
            self.errors.lock().unwrap()
        );
    }

    fn screenshot(&self) -> Result<Vec<u8>, String> {
        self.tab
            .capture_screenshot(CaptureScreenshotFormatOption::Png, None, None, true)
            .map_err(|e| format!("{e:#}"))
    }

    /// Clicks an element as a user does: mouse down and up at its middle.
    /// (Not `Element::click`: its DOM queries take about a second each.)
    fn click(&self, selector: &str) {
        let middle = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector:?}); \
               e.scrollIntoView({{block: 'nearest', inline: 'nearest'}}); \
               const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let clicked = match middle.as_ref().ok().and_then(|m| m.as_array()) {
            Some(m) if m.len() == 2 => {
                let point = Point {
                    x: m[0].as_f64().unwrap_or_default(),
                    y: m[1].as_f64().unwrap_or_default(),
                };
                self.tab
                    .click_point(point)
                    .map(|_| ())
                    .map_err(|e| format!("{e:#}"))
            }
            _ => Err(format!("no such element: {middle:?}")),
        };
        if let Err(e) = clicked {
            self.fail(&format!("cannot click {selector}: {e}"));
        }
    }

    /// Picks `value` in a `<select>`.
    fn select(&self, selector: &str, value: &str) {
        let expression = format!(
            "(() => {{ const s = document.querySelector({selector:?}); s.value = {value:?}; \
             s.dispatchEvent(new Event('change', {{bubbles: true}})); return s.value === {value:?}; }})()"
        );
        if self.eval(&expression) != Ok(Value::Bool(true)) {
            self.fail(&format!("cannot select {value} in {selector}"));
        }
    }

    /// Empties a text field and types `text` into it, key by key.
    fn type_into(&self, selector: &str, text: &str) {
        let focus = format!(
            "(() => {{ const e = document.querySelector({selector:?}); e.value = ''; e.focus(); \
               return document.activeElement === e; }})()"
        );
        let typed = match self.eval(&focus) {
            Ok(Value::Bool(true)) => self
                .tab
                .type_str(text)
                .map(|_| ())
                .map_err(|e| format!("{e:#}")),
            other => Err(format!("cannot focus it: {other:?}")),
        };
        if let Err(e) = typed {
            self.fail(&format!("cannot type into {selector}: {e}"));
        }
    }

    /// Writes with the page's write form, and waits for the answer.
    fn write(&self, node: &str, key: &str, value: &str) {
        let answers = self.count("#results li");
        self.select("#write-node", node);
        self.type_into("#write-key", key);
        self.type_into("#write-value", value);
        self.click("#write-submit");
        self.wait(
            &format!("the answer to the write of {key} = {value} at {node}"),
            &format!(
                "document.querySelectorAll('#results li').length > {answers} && \
                 document.querySelector('#results li').matches('.ok[data-op=write][data-node={node}]')"
            ),
        );
    }

    /// Reads with the page's read form; waits for the answer and returns the
    /// value it shows (JSON text).
    fn read(&self, node: &str, key: &str) -> String {
        let answers = self.count("#results li");
        self.select("#read-node", node);
        self.type_into("#read-key", key);
        self.click("#read-submit");
        self.wait(
            &format!("the answer to the read of {key} at {node}"),
            &format!(
                "document.querySelectorAll('#results li').length > {answers} && \
                 document.querySelector('#results li').matches('.ok[data-op=read][data-node={node}]')"
            ),
        );
        self.string("document.querySelector('#results li').dataset.value")
    }

    fn count(&self, selector: &str) -> u64 {
        self.eval(&format!("document.querySelectorAll({selector:?}).length"))
            .ok()
            .and_then(|v| v.as_u64())
            .unwrap_or_else(|| self.fail(&format!("cannot count {selector}")))
    }

    fn string(&self, expression: &str) -> String {
        match self.eval(expression) {
            Ok(Value::String(s)) => s,
            other => self.fail(&format!("{expression} is not a string: {other:?}")),
        }
    }
}

/// A selector of the diagram's dot for `kind` of write `dot` at `node`.
fn event(node: &str, kind: &str, dot: &str) -> String {
    format!("circle.ev[data-node={node}][data-kind={kind}][data-dot=\"{dot}\"]")
}

fn exists(selector: &str) -> String {
    format!("document.querySelector({selector:?}) !== null")
}

#[test]
fn scenario_2_from_the_page() {
    let Some(browser_path) = chromium() else {
        if std::env::var("KVNODE_SKIP_BROWSER_TEST").as_deref() == Ok("1") {
            eprintln!("skipped: chromium is not installed and KVNODE_SKIP_BROWSER_TEST=1");
            return;
        }
        panic!(
            "the explorer test needs chromium: apt-get install chromium \
             (or set CHROMIUM=/path/to/chrome; KVNODE_SKIP_BROWSER_TEST=1 skips this test)"
        );
    };
    let started = Instant::now();
    let cluster = TestCluster::start_with(
        3,
        &[
            ("KVNODE_TRACE_BUFFER", "10000"),
            // Node2 must not repair node3 with node1's write while the page
            // holds the link paused: node3 would not buffer.
            ("KVNODE_REPAIR_AFTER", "1h"),
        ],
    );
    let page = Page::open(browser_path, &format!("{}/ui", cluster.url(1)));
    eprintln!(
        "{:>8.2?} the cluster and the browser started",
        started.elapsed()
    );

    page.wait(
        "the page to follow every node's trace",
        "document.body.dataset.ready === 'true' && \
         ['node1', 'node2', 'node3'].every(n => document.querySelector('#streams').textContent.includes(`${n}: live`))",
    );
    page.wait(
        "the link buttons, once the fault hook answered",
        "document.querySelector('#link-node1-node3') && !document.querySelector('#link-node1-node3').disabled",
    );

    // 1. Cut node1 -> node3.
    page.click("#link-node1-node3");
    page.wait(
        "node1 -> node3 paused",
        "document.querySelector('#link-node1-node3').dataset.paused === 'true'",
    );
    // 2. x = 100 at node1; node2 gets it (node3 does not).
    page.write("node1", "x", "100");
    page.wait(
        "node2 to deliver node1:1 in the diagram",
        &exists(&event("node2", "deliver", "node1:1")),
    );
    // 3. node2 reads it, 4. then writes x = 200, which depends on it.
    assert_eq!(page.read("node2", "x"), "100");
    page.write("node2", "x", "200");
    // 5. node3 receives node2's write first and buffers it.
    let buffered = event("node3", "buffered", "node2:1");
    page.wait(
        "node3's buffered node2:1, waiting",
        &exists(&format!("{buffered}.pending")),
    );
    assert!(
        page.count(&event("node3", "deliver_from_buffer", "node2:1")) == 0,
        "node2:1 cannot be delivered while node1:1 is missing"
    );
    page.wait(
        "the arrow of node2's batch to node3",
        "[...document.querySelectorAll('line.msg')].some(l => l.dataset.from.startsWith('node2/') && \
           document.querySelector(`circle.ev[data-ref=\"${l.dataset.to}\"]`)?.dataset.node === 'node3')",
    );
    // 6. Resume node1 -> node3: 7. node3 applies node1:1, then node2:1 from the buffer.
    page.click("#link-node1-node3");
    page.wait(
        "node1 -> node3 resumed",
        "document.querySelector('#link-node1-node3').dataset.paused === 'false'",
    );
    page.wait(
        "node3's delivery of node2:1 from the buffer",
        &exists(&event("node3", "deliver_from_buffer", "node2:1")),
    );
    page.wait(
        "the buffered dot marked delivered, with its time in the buffer",
        &format!(
            "{} && {}",
            exists(&format!("{buffered}.delivered")),
            exists("line.wait[data-node=node3][data-dot=\"node2:1\"]:not(.pending)")
        ),
    );
    // 8. node3 reads 200.
    assert_eq!(page.read("node3", "x"), "200");

    // node3's line, in order: receive node2's batch, buffer node2:1, receive
    // node1's batch, deliver node1:1, deliver node2:1 from the buffer.
    let node3 = page
        .eval(
            "[...document.querySelectorAll('circle.ev[data-node=node3]')] \
               .sort((a, b) => a.dataset.id - b.dataset.id) \
               .map(c => `${c.dataset.kind} ${c.dataset.dot || c.dataset.dots || ''}`.trim())",
        )
        .unwrap_or_else(|e| page.fail(&e));
    let node3: Vec<&str> = node3
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let want = [
        "receive node2:1",
        "buffered node2:1",
        "receive node1:1",
        "deliver node1:1",
        "deliver_from_buffer node2:1",
    ];
    let mut rest = node3.iter();
    for step in want {
        assert!(
            rest.any(|e| *e == step),
            "node3's events {node3:?} lack {step} in the order {want:?}"
        );
    }
    assert!(page.count("line.msg") >= 4, "arrows for the batches");

    // Point at the buffered dot: the screenshot shows what it waited for. A
    // record arriving meanwhile (a resent batch) redraws the diagram and
    // replaces the element found: find it again until the pointer lands.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let hovered = page
            .tab
            .find_element(&buffered)
            .and_then(|e| e.move_mouse_over().map(|_| ()));
        match hovered {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => {
                page.fail(&format!("cannot point at {buffered}: {e:#}"))
            }
            Err(_) => std::thread::sleep(PAGE_POLL),
        }
    }
    page.wait(
        "the details of the buffered write",
        "!document.querySelector('#tooltip').hidden && \
         document.querySelector('#tooltip').textContent.includes('waits for')",
    );
    let png = page.screenshot().unwrap_or_else(|e| page.fail(&e));
    let shot = artefacts().join("scenario2.png");
    std::fs::write(&shot, &png).expect("the screenshot is saved");
    eprintln!("screenshot: {}", shot.display());
    if std::env::var("UPDATE_SCREENSHOT").as_deref() == Ok("1") {
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/explorer.png");
        std::fs::write(&docs, &png).expect("docs/explorer.png is written");
        eprintln!("updated {}", docs.display());
    }

    // The page's own runner does it again (node2's next write is node2:2).
    page.click("#run-scenario2");
    page.wait(
        "the scenario button to finish",
        "document.querySelector('#scenario2-status').textContent.startsWith('Done')",
    );
    page.wait(
        "node3's second buffered write, delivered",
        &exists(&format!(
            "{}.delivered",
            event("node3", "buffered", "node2:2")
        )),
    );

    // Concurrent writes: cut node1 and node2 from each other, write at both,
    // heal: the key is listed with its siblings and its events are ringed.
    for link in ["#link-node1-node2", "#link-node2-node1"] {
        page.click(link);
        page.wait(
            &format!("{link} paused"),
            &format!("document.querySelector('{link}').dataset.paused === 'true'"),
        );
    }
    page.write("node1", "colour", "red");
    page.write("node2", "colour", "blue");
    for link in ["#link-node1-node2", "#link-node2-node1"] {
        page.click(link);
        page.wait(
            &format!("{link} resumed"),
            &format!("document.querySelector('{link}').dataset.paused === 'false'"),
        );
    }
    page.wait(
        "colour listed among the keys with siblings",
        &exists("#sibling-keys li[data-key=colour]"),
    );
    page.wait(
        "a siblings event for colour, ringed",
        &exists("circle.ev.sib[data-kind=siblings][data-key=colour]"),
    );

    let errors = page.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "the page's scripts threw: {errors:?}");
    eprintln!("scenario 2 in the browser took {:?}", started.elapsed());
}

#[test]
fn the_proxy_forwards_the_pages_calls_to_any_node_and_nothing_else() {
    let cluster = TestCluster::start_with(2, &[("KVNODE_TRACE_BUFFER", "100")]);
    let api = format!("{}/ui/api", cluster.url(1));

    let (status, body) = get(&format!("{api}/cluster"));
    assert_eq!(
        (status, body),
        (200, json!({"node": "node1", "nodes": ["node1", "node2"]}))
    );
    // Through node1, to node2.
    let (status, body) = get(&format!("{api}/node2/health"));
    assert_eq!((status, &body["node"]), (200, &json!("node2")), "{body}");
    let (status, body) = post(
        &format!("{api}/node2/write"),
        &json!({"key": "a/b", "value": 7}),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&format!("{api}/node2/v1/kv/a/b"));
    assert_eq!((status, &body["value"]), (200, &json!(7)), "{body}");
    let (status, body) = get(&format!("{api}/node2/read?key=a%2Fb"));
    assert_eq!((status, &body["value"]), (200, &json!(7)), "{body}");
    let (status, body) = get(&format!("{api}/node2/v1/trace?after=0"));
    assert_eq!((status, &body["node"]), (200, &json!("node2")), "{body}");
    assert!(
        body["events"].as_array().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
    let (status, body) = post(
        &format!("{api}/node2/admin/v1/links/node1/pause"),
        &json!({}),
    );
    assert_eq!(
        (status, &body["paused"]),
        (200, &json!(["node1"])),
        "{body}"
    );
    // The member's errors come back as they are.
    let (status, body) = post(&format!("{api}/node2/write"), &json!({"value": 7}));
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "bad_request", "{body}");

    // Never the peer API, metrics or anything else; never an unknown node.
    for (method, path) in [
        ("POST", "node2/peer/v1/events"),
        ("POST", "node2/peer/v1/sync"),
        ("GET", "node2/metrics"),
        ("GET", "node2/v1/kv/../../metrics"),
        ("GET", "node9/health"),
    ] {
        let (status, body) = request(
            method,
            &format!("{api}/{path}"),
            Some((Some("application/json"), b"{}")),
        );
        assert_eq!(status, 404, "{method} {path}: {body}");
        assert_eq!(
            body["error"]["code"], "not_found",
            "{method} {path}: {body}"
        );
    }
}

#[test]
fn the_proxy_passes_the_callers_token_and_adds_no_secret() {
    const SECRET: &str = "cluster-secret-0123456789";
    const TOKEN: &str = "client-token-0123456789";
    let cluster = TestCluster::start_with(
        2,
        &[
            ("KVNODE_CLUSTER_SECRET", SECRET),
            ("KVNODE_CLIENT_TOKEN", TOKEN),
        ],
    );
    let api = format!("{}/ui/api/node2", cluster.url(1));
    let call = |method: &str, path: &str, token: Option<&str>| -> u16 {
        let mut request = ureq::request(method, &format!("{api}/{path}"));
        if let Some(token) = token {
            request = request.set("Authorization", &format!("Bearer {token}"));
        }
        let result = if method == "POST" {
            request.send_json(json!({}))
        } else {
            request.call()
        };
        match result {
            Ok(response) => response.status(),
            Err(ureq::Error::Status(status, _)) => status,
            Err(e) => panic!("{method} {path}: {e}"),
        }
    };
    assert_eq!(call("GET", "status", None), 401);
    assert_eq!(call("GET", "status", Some(TOKEN)), 200);
    assert_eq!(call("GET", "admin/v1/links", None), 401, "no secret added");
    assert_eq!(call("GET", "admin/v1/links", Some(TOKEN)), 401);
    assert_eq!(
        call("POST", "admin/v1/links/node1/pause", Some(SECRET)),
        200
    );
}
