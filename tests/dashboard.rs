//! Issue 16: the dashboard page in headless Chromium against a real
//! cluster (gateway, coordinator and worker binaries, a fresh database and
//! Redis prefix). An administrator signs in, sees the project with its
//! counts, opens the project, a repository and a branch's findings, starts
//! a rescan and watches its progress reach 100 %; a read-only user sees the
//! same project but no rescan button. Screenshots of each step are saved
//! (their directory is printed).
//!
//! Chromium and ChromeDriver come from Debian (`chromium`,
//! `chromium-driver`); `deploy/local/services.sh` installs them.
//! `LEAKSCAN_CHROMEDRIVER` and `LEAKSCAN_CHROMIUM` name others.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use base64::Engine as _;
use leakscan_store::testing::{redis_url, unique_name, TestDatabase};
use leakscan_tests::{
    git, start_coordinator, start_gateway, start_worker, wait_until, Api, ClusterEnv,
};
use serde_json::{json, Value};

const ADMIN: (&str, &str) = ("admin", "dashboard-admin-password");
const VIEWER: (&str, &str) = ("viewer", "dashboard-viewer-password");
// A fake AWS access key id of the right shape, made up for this test.
const PLANTED: &str = "AKIAZX4RT7QW2LMN9VBE";
/// W3C WebDriver's key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A ChromeDriver process and one headless Chromium session, both ended
/// when dropped. Speaks W3C WebDriver (JSON over HTTP) with the few
/// commands this test needs.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    screenshots: PathBuf,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(screenshots: PathBuf) -> Browser {
        let chromedriver = std::env::var("LEAKSCAN_CHROMEDRIVER")
            .unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        let chromium =
            std::env::var("LEAKSCAN_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromedriver).exists() && Path::new(&chromium).exists(),
            "{chromedriver} or {chromium} is missing: run deploy/local/services.sh (it installs Debian's chromium and chromium-driver)"
        );
        // Port 0: ChromeDriver picks one and says which.
        let mut driver = Command::new(&chromedriver)
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {chromedriver}: {error}"));
        let stdout = driver.stdout.take().expect("piped stdout");
        let mut lines = BufReader::new(stdout).lines();
        let port = loop {
            let line = lines
                .next()
                .and_then(Result::ok)
                .expect("ChromeDriver says on which port it listens");
            if let Some(rest) = line.split("started successfully on port ").nth(1) {
                break rest.trim_end_matches('.').trim().to_string();
            }
        };
        // Keep reading its output so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        let base = format!("http://127.0.0.1:{port}");
        let profile = tempfile::tempdir().unwrap();
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            },
        }}});
        let created = wait_until("ChromeDriver to answer", Duration::from_secs(30), || {
            ureq::post(&format!("{base}/session"))
                .send_json(capabilities.clone())
                .ok()
                .map(|response| response.into_json::<Value>().unwrap())
        });
        let session = created["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        std::fs::create_dir_all(&screenshots).unwrap();
        Browser {
            driver,
            base,
            session,
            screenshots,
            _profile: profile,
        }
    }

    /// One WebDriver command: its `value`, or `Err` with the driver's error.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let request = ureq::request(method, &url).timeout(Duration::from_secs(60));
        let answer = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        match answer {
            Ok(response) => Ok(response.into_json::<Value>().unwrap()["value"].take()),
            Err(ureq::Error::Status(_, response)) => {
                Err(response.into_string().unwrap_or_default())
            }
            Err(error) => Err(error.to_string()),
        }
    }

    fn go(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .unwrap_or_else(|error| panic!("open {url}: {error}"));
    }

    fn find_all(&self, css: &str) -> Vec<String> {
        self.command(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .unwrap_or_else(|error| panic!("find {css}: {error}"))
        .as_array()
        .unwrap()
        .iter()
        .map(|element| element[ELEMENT].as_str().unwrap().to_string())
        .collect()
    }

    /// The first element `css` selects, once there is one (the page loads
    /// its data after it shows).
    fn find(&self, css: &str) -> String {
        wait_until(
            &format!("an element {css}"),
            Duration::from_secs(30),
            || self.find_all(css).into_iter().next(),
        )
    }

    fn text(&self, css: &str) -> String {
        let element = self.find(css);
        self.command("GET", &format!("/element/{element}/text"), None)
            .unwrap_or_else(|error| panic!("text of {css}: {error}"))
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn click(&self, css: &str) {
        let element = self.find(css);
        self.command(
            "POST",
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .unwrap_or_else(|error| panic!("click {css}: {error}"));
    }

    fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css);
        self.command(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .unwrap_or_else(|error| panic!("type into {css}: {error}"));
    }

    fn is_displayed(&self, css: &str) -> bool {
        let element = self.find(css);
        self.command("GET", &format!("/element/{element}/displayed"), None)
            .unwrap_or_else(|error| panic!("displayed {css}: {error}"))
            .as_bool()
            .unwrap_or(false)
    }

    /// Saves a PNG of the window as `<name>.png`.
    fn screenshot(&self, name: &str) {
        let data = self
            .command("GET", "/screenshot", None)
            .unwrap_or_else(|error| panic!("screenshot: {error}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(self.screenshots.join(format!("{name}.png")), png).unwrap();
    }

    fn sign_in(&self, gateway: &str, (name, password): (&str, &str)) {
        self.go(&format!("http://{gateway}/dashboard"));
        assert!(self.is_displayed("#sign-in-form"));
        self.type_into("#name", name);
        self.type_into("#password", password);
        self.click("#sign-in-button");
        wait_until("the signed-in name", Duration::from_secs(30), || {
            (self.text("#who-name") == name).then_some(())
        });
    }

    fn sign_out(&self) {
        self.click("#sign-out");
        wait_until("the sign-in form", Duration::from_secs(30), || {
            self.is_displayed("#sign-in-form").then_some(())
        });
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.command("DELETE", "", None);
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// A repository under `root` with `files` committed on `main`.
fn repository(root: &Path, project: &str, slug: &str, files: &[(&str, String)]) -> PathBuf {
    let path = root.join(project).join(slug);
    std::fs::create_dir_all(&path).unwrap();
    git(&path, &["init", "-q", "-b", "main"]);
    for (name, text) in files {
        std::fs::write(path.join(name), text).unwrap();
    }
    git(&path, &["add", "-A"]);
    git(&path, &["commit", "-q", "-m", "settings"]);
    path
}

#[test]
fn the_dashboard_page_in_chromium_for_an_administrator_and_a_read_only_user() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let database = runtime.block_on(TestDatabase::create()).unwrap();
    let redis = format!("{}?prefix={}:", redis_url(), unique_name("dashboard"));
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let root = dir.join("root");
    repository(
        &root,
        "DASH",
        "web",
        &[("deploy.env", format!("AWS_ACCESS_KEY_ID={PLANTED}\n"))],
    );
    repository(
        &root,
        "DASH",
        "api",
        &[("README.md", "Nothing secret here.\n".to_string())],
    );
    let cluster_env = ClusterEnv::new(&database.url, &redis, ADMIN);
    let env = cluster_env.vars();
    let (_coordinator, coordinator) = start_coordinator(&env, dir.join("coordinator.log"));
    let (_gateway, gateway) =
        start_gateway(&env, &root, "127.0.0.1:0", &[], dir.join("gateway.log"));
    let _worker = start_worker(dir, "dashboard", &coordinator, &cluster_env.worker_token);

    // What the page shows comes from the API: a scan first, a read-only
    // user, and one push the hook blocked.
    let api = Api::new(&gateway, ADMIN.0, ADMIN.1);
    api.total_rescan();
    api.expect(
        "POST",
        &format!(
            "/rest/api/latest/admin/users?name={}&password={}",
            VIEWER.0, VIEWER.1
        ),
        None,
        204,
    );
    api.expect(
        "PUT",
        &format!(
            "/rest/api/latest/projects/DASH/permissions/users?name={}&permission=PROJECT_READ",
            VIEWER.0
        ),
        None,
        204,
    );
    let decision = api.expect(
        "POST",
        "/rest/security/latest/hook/projects/DASH/repos/web/push",
        Some(json!({
            "ref": "refs/heads/main",
            "pusher": "someone",
            "findings": [{"commit": "0123456789abcdef0123456789abcdef01234567", "path": "deploy.env",
                          "line": 1, "ruleId": "AWS_ACCESS_KEY_ID", "secret": PLANTED}],
        })),
        200,
    );
    assert_eq!(decision["unreviewed"], json!([0]), "{decision}");

    let screenshots = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard-screenshots");
    let browser = Browser::start(screenshots.clone());
    eprintln!("screenshots in {}", screenshots.display());

    // The administrator: the project with its counts (two branches, one
    // vulnerable, one secure) and the hook's blocked push.
    browser.sign_in(&gateway, ADMIN);
    let row = "table.projects tr[data-project=DASH]";
    browser.find(row);
    assert_eq!(browser.text(&format!("{row} .count-vulnerable")), "1");
    assert_eq!(browser.text(&format!("{row} .count-secure")), "1");
    assert_eq!(browser.text(&format!("{row} .count-not-scanned")), "0");
    assert_eq!(browser.text(&format!("{row} .hook-blocked")), "1");
    assert_eq!(browser.text(&format!("{row} .status")), "Vulnerable");
    assert!(
        !browser.find_all("button.rescan").is_empty(),
        "total rescan button"
    );
    browser.screenshot("1-projects");

    browser.click(&format!("{row} a.project-link"));
    let web = "table.repositories tr[data-repository=web]";
    assert_eq!(browser.text(&format!("{web} .status")), "Vulnerable");
    assert_eq!(
        browser.text("table.repositories tr[data-repository=api] .status"),
        "Secure"
    );
    browser.screenshot("2-project");

    browser.click(&format!("{web} a.repository-link"));
    let main = "table.branches tr[data-branch=main]";
    assert_eq!(browser.text(&format!("{main} .status")), "Vulnerable");
    assert!(browser.is_displayed("a.export"));
    browser.screenshot("3-repository");

    browser.click(&format!("{main} a.branch-link"));
    let finding = browser.text("table.findings tr.finding");
    assert!(finding.contains("deploy.env"), "{finding}");
    assert!(
        !finding.contains(PLANTED),
        "the page shows the secret redacted: {finding}"
    );
    // Filters: "Reviewed" alone hides the open finding, "All" shows it.
    browser.click("#filter-reviewed option[value=true]");
    wait_until("the reviewed filter", Duration::from_secs(30), || {
        browser.find_all("table.findings").is_empty().then_some(())
    });
    browser.click("#filter-reviewed option[value=all]");
    browser.find("table.findings tr.finding");
    browser.screenshot("4-findings");

    // A rescan from the page, watched over the event stream to 100 %.
    browser.click("button.rescan");
    let job = "#job-list li.job";
    wait_until(
        "the rescan to reach 100 %",
        Duration::from_secs(120),
        || {
            let state = browser.text(&format!("{job} .state"));
            (state == "done").then_some(())
        },
    );
    assert_eq!(browser.text(&format!("{job} .percent")), "100 %");
    browser.screenshot("5-rescanned");
    let scan_key = {
        let element = browser.find(job);
        browser
            .command(
                "GET",
                &format!("/element/{element}/attribute/data-scan-key"),
                None,
            )
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    };
    let rescanned = api.expect(
        "GET",
        &format!("/rest/security/latest/jobs/{scan_key}"),
        None,
        200,
    );
    assert_eq!(rescanned["scope"], "branch", "{rescanned}");
    assert_eq!(rescanned["state"], "done", "{rescanned}");
    browser.sign_out();

    // The read-only user: the same project and findings, no rescan button.
    browser.sign_in(&gateway, VIEWER);
    browser.find(row);
    assert_eq!(browser.text(&format!("{row} .count-vulnerable")), "1");
    assert!(browser.find_all("button.rescan").is_empty());
    browser.click(&format!("{row} a.project-link"));
    browser.find(web);
    assert!(browser.find_all("button.rescan").is_empty());
    browser.click(&format!("{web} a.repository-link"));
    browser.find(main);
    assert!(browser.find_all("button.rescan").is_empty());
    assert!(browser.is_displayed("a.export"));
    browser.click(&format!("{main} a.branch-link"));
    browser.find("table.findings tr.finding");
    assert!(browser.find_all("button.rescan").is_empty());
    browser.screenshot("6-read-only");
    drop(browser);

    runtime.block_on(database.drop_database()).unwrap();
}
