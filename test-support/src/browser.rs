//! Headless Chromium (Debian's `chromium`, which `scripts/test.sh` installs
//! when missing) loading a page and handing back the DOM its scripts built.

use std::time::Duration;

/// Where Debian installs Chromium; `CHROMIUM` overrides it.
fn chromium() -> String {
    std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_owned())
}

/// Loads `url` in a fresh headless Chromium profile and returns the DOM once
/// the page's scripts are done: virtual time runs for up to 20 s, and
/// stops only while requests are in flight, so the page's fetches finish.
pub async fn rendered_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "chromium-profile-{}-{}",
        std::process::id(),
        fastrand::u64(..)
    ));
    let run = tokio::process::Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            // The test machines have no outside network: no background calls home.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=20000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(url)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("chromium finished within 120 s")
        .unwrap_or_else(|error| {
            panic!(
                "cannot run {} ({error}): scripts/test.sh installs Debian's chromium",
                chromium()
            )
        });
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        output.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the DOM is UTF-8")
}
