//! A real browser for the console's tests: Debian's `chromium`, driven through `chromedriver`
//! (WebDriver over loopback) with `fantoccini`. Headless, no sandbox (the tests run as root),
//! `/dev/shm` unused (containers give it little). Without chromium the test is skipped loudly,
//! except under `CI=true`, where it must run (`./dev test` installs it).

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};

use super::eventually;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A headless chromium session; chromedriver (and so the browser) is killed when dropped.
pub struct Browser {
    pub client: Client,
    /// Where [`Browser::screenshot`] saves its pictures.
    pub screenshots: PathBuf,
    _driver: Driver,
}

/// The chromedriver process, owned: killed when dropped.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A browser, or `None` (after a loud line) when chromium is not installed outside CI.
pub async fn browser() -> Option<Browser> {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        assert!(
            std::env::var("CI").map_or(true, |ci| ci != "true"),
            "CI=true but {CHROMIUM} or {CHROMEDRIVER} is missing (./dev test installs chromium chromium-driver)"
        );
        eprintln!(
            "\n*** SKIPPING the browser test: {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver, or ./dev test) ***\n"
        );
        return None;
    }
    let port =
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a port").port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let webdriver = format!("http://127.0.0.1:{port}");
    let capabilities = json!({
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                     "--no-proxy-server", "--window-size=1280,1000", "--no-first-run"],
        },
    });
    let Value::Object(capabilities) = capabilities else { unreachable!() };
    let client = eventually("chromedriver to answer", Duration::from_secs(30), || {
        let (webdriver, capabilities) = (webdriver.clone(), capabilities.clone());
        async move {
            let connector = hyper_util::client::legacy::connect::HttpConnector::new();
            ClientBuilder::new(connector)
                .capabilities(capabilities)
                .connect(&webdriver)
                .await
                .map_err(|err| err.to_string())
        }
    })
    .await;
    let screenshots = screenshots_dir();
    std::fs::create_dir_all(&screenshots).expect("screenshots dir");
    Some(Browser { client, screenshots, _driver: driver })
}

/// `target/console-screenshots` of this checkout (or of `CARGO_TARGET_DIR`).
fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"), PathBuf::from);
    target.join("console-screenshots")
}

impl Browser {
    /// Saves a PNG of the window as `<name>.png`; returns its path.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("screenshot");
        let path = self.screenshots.join(format!("{name}.png"));
        std::fs::write(&path, png).expect("save screenshot");
        path
    }

    /// Waits until an element matching `css` is there; returns it.
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        eventually(&format!("an element {css}"), Duration::from_secs(30), || async {
            self.client.find(Locator::Css(css)).await.map_err(|err| err.to_string())
        })
        .await
    }

    /// Waits until the text of the element `css` satisfies `done`, for up to `timeout`.
    pub async fn wait_text(
        &self,
        css: &str,
        timeout: Duration,
        done: impl Fn(&str) -> bool,
    ) -> String {
        eventually(&format!("the text of {css}"), timeout, || async {
            let found = self.client.find(Locator::Css(css)).await.map_err(|err| err.to_string())?;
            let text = found.text().await.map_err(|err| err.to_string())?;
            if done(&text) { Ok(text) } else { Err(text) }
        })
        .await
    }

    /// Types `text` into the field `css`, replacing what it held.
    pub async fn type_into(&self, css: &str, text: &str) {
        let field = self.find(css).await;
        field.clear().await.expect("clear");
        field.send_keys(text).await.expect("type");
    }

    /// Clicks the element `css`, finding it again if the page replaced it in between.
    pub async fn click(&self, css: &str) {
        eventually(&format!("a click on {css}"), Duration::from_secs(30), || async {
            let found = self.client.find(Locator::Css(css)).await.map_err(|err| err.to_string())?;
            found.click().await.map_err(|err| err.to_string())
        })
        .await
    }

    /// Runs a script in the page and answers what it returns.
    pub async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, Vec::new()).await.expect("script runs")
    }
}
