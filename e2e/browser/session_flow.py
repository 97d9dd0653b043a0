"""A real browser logs in to a web app behind the scopegate sidecar (docs/sessions.md).

Headless Chromium from Debian, driven by Selenium through Debian's chromedriver, with a
profile of its own whose NSS database trusts exactly the CAs given (the operator's CA for the
issuer, the app's CA for the app): no certificate error is ignored. The app and the issuer are
reached by their names through --host-resolver-rules, as a cluster's DNS would lead to them.

The flow: open a protected page, get sent to the issuer's login page, log in, land on the page
(its text and a screenshot name the user), post a form of the app with the session, wait until
the first access token has expired and load the page again (the sidecar refreshes silently:
the page still shows the user and the session cookie is a new one), log out with the page's
button, and open the protected page again: the browser is back on the login page; so is a
browser that puts back the session cookie it had before logging out.

Each check that fails exits with status 1 and says what was seen; a missing browser or driver
exits with status 2. The report (every step's URL and text) is printed as one JSON line and
written to <logs>/browser-session-report.json.

Usage: session_flow.py --app https://web.ns.svc --issuer https://auth.ns.svc
    --host-rule "MAP web.ns.svc 10.77.3.2:15080" --ca operator-ca.crt --ca app-ca.crt
    --logs DIR --work DIR --user alice --password wonderland --name alice --expire-wait 25
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

SESSION_COOKIE = "__Host-scopegate-session"


class FlowFailed(Exception):
    pass


def check(condition, message):
    if not condition:
        raise FlowFailed(message)


def trusting_profile(work, cas):
    """A HOME whose NSS database (the one Chromium on Linux reads) trusts `cas` for TLS."""
    home = os.path.join(work, "home")
    nssdb = os.path.join(home, ".pki", "nssdb")
    os.makedirs(nssdb, exist_ok=True)
    db = f"sql:{nssdb}"
    subprocess.run(["certutil", "-N", "-d", db, "--empty-password"], check=True)
    for i, ca in enumerate(cas):
        subprocess.run(["certutil", "-A", "-d", db, "-t", "C,,", "-n", f"test-ca-{i}", "-i", ca], check=True)
    return home


def browser(args, home):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        # Chromium's sandbox needs user namespaces a root test run does not give it.
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1100,800",
        f"--user-data-dir={os.path.join(args.work, 'profile')}",
        f"--host-resolver-rules={', '.join(args.host_rule)}",
    ):
        options.add_argument(flag)
    env = dict(os.environ, HOME=home)
    service = Service(
        executable_path=shutil.which("chromedriver"),
        env=env,
        log_output=os.path.join(args.logs, "chromedriver.log"),
    )
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    return driver


def wait_for(driver, what, predicate, timeout=30):
    """Polls `predicate(driver)` until it is true; fails naming `what` and where the browser is."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate(driver):
                return
        except Exception:  # a page between loads
            pass
        if time.monotonic() > deadline:
            raise FlowFailed(f"{what}: the browser is at {driver.current_url}: {text(driver)[:500]!r}")
        time.sleep(0.2)


def text(driver):
    from selenium.webdriver.common.by import By

    try:
        return driver.find_element(By.TAG_NAME, "body").text
    except Exception:
        return ""


def session_cookie(driver):
    return next((c for c in driver.get_cookies() if c["name"] == SESSION_COOKIE), None)


def flow(args, driver, report):
    from selenium.webdriver.common.by import By

    app, issuer = args.app.rstrip("/"), args.issuer.rstrip("/")
    shop = f"{app}/shop/"

    def step(name):
        report["steps"].append({"step": name, "url": driver.current_url, "text": text(driver)})

    def on_login_page(d):
        return d.current_url.startswith(f"{issuer}/login?") and d.find_elements(By.NAME, "username")

    def on_shop(d):
        return d.current_url == shop and d.find_elements(By.ID, "user")

    # 1. A protected page without a session: the sidecar sends the browser to the issuer, which
    #    sends it to the login app's page.
    driver.get(shop)
    wait_for(driver, "the login page after opening the shop", on_login_page)
    step("sent to login")
    check(session_cookie(driver) is None, "a session cookie before logging in")

    # 2. Log in on the issuer's login page: back on the page first asked for, signed in.
    driver.find_element(By.NAME, "username").send_keys(args.user)
    driver.find_element(By.NAME, "password").send_keys(args.password)
    driver.find_element(By.TAG_NAME, "button").click()
    wait_for(driver, "the shop after logging in", on_shop)
    step("logged in")
    user = driver.find_element(By.ID, "user").text
    check(user == f"Signed in as {args.name}", f"the page says {user!r}")
    screenshot = os.path.join(args.logs, "browser-session-logged-in.png")
    check(driver.save_screenshot(screenshot), "no screenshot")
    report["screenshot"] = screenshot

    # The session is one __Host- cookie the page's JavaScript cannot read.
    cookie = session_cookie(driver)
    check(cookie is not None, f"no {SESSION_COOKIE}: {[c['name'] for c in driver.get_cookies()]}")
    check(cookie.get("httpOnly") and cookie.get("secure"), f"the cookie is not HttpOnly and Secure: {sorted(cookie)}")
    check(cookie.get("sameSite") == "Lax", f"the cookie's SameSite is {cookie.get('sameSite')}")
    check(cookie.get("path") == "/" and not cookie.get("domain", "").startswith("."), "the cookie's scope")
    script_sees = driver.execute_script("return document.cookie")
    check("scopegate" not in script_sees, f"JavaScript sees {script_sees!r}")
    report["cookie_bytes"] = len(cookie["value"])
    first_value = cookie["value"]

    # 3. A form of the app, posted with the session from its own origin, goes through.
    driver.find_element(By.ID, "add-coffee-beans").click()
    wait_for(driver, "the cart after adding", lambda d: on_shop(d) and "coffee-beans" in d.find_element(By.ID, "cart").text)
    step("added to cart")

    # 4. Once the first access token has expired, the page still loads signed in: the sidecar
    #    refreshed the tokens and set a new cookie, and the browser never saw the issuer.
    time.sleep(args.expire_wait)
    driver.get(shop)
    wait_for(driver, "the shop after the access token expired", on_shop)
    step("after expiry")
    user = driver.find_element(By.ID, "user").text
    check(user == f"Signed in as {args.name}", f"after the expiry the page says {user!r}")
    refreshed = session_cookie(driver)
    check(refreshed is not None, "the session cookie is gone after the expiry")
    check(refreshed["value"] != first_value, "the session cookie was not renewed by a refresh")
    check("coffee-beans" in driver.find_element(By.ID, "cart").text, "the cart is lost: another user?")

    kept = refreshed
    # 5. Log out with the page's button: the sidecar revokes, clears the cookie, and sends the
    #    browser to the app's afterLogout page.
    driver.find_element(By.ID, "logout").click()
    wait_for(driver, "the page after logout", lambda d: d.current_url == f"{app}/" and d.find_elements(By.ID, "enter"))
    step("logged out")
    check(session_cookie(driver) is None, "the session cookie outlived the logout")

    # 6. The protected page again: back to the login page.
    driver.get(shop)
    wait_for(driver, "the login page after logout", on_login_page)
    step("sent to login again")

    # 7. A copy of the session cookie kept from before the logout is dead: its refresh family
    #    was revoked at the issuer, so the sidecar ends it (as soon as the revocation feed
    #    brings the cut-off, at the latest at its next refresh, 10 s into its token's life).
    #    Put back once: the browser then keeps whatever the sidecar sets (putting the old
    #    value back again would replay a rotated refresh token, which ends the family anyway).
    driver.get(f"{app}/")
    driver.add_cookie({k: kept[k] for k in ("name", "value", "path", "secure", "httpOnly", "sameSite")})

    def load_shop(d):
        d.get(shop)
        return on_login_page(d)

    wait_for(driver, "the login page with the cookie kept from before logout", load_shop, timeout=60)
    step("kept cookie refused")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--app", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--host-rule", action="append", required=True)
    parser.add_argument("--ca", action="append", required=True)
    parser.add_argument("--logs", required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--expire-wait", type=float, required=True)
    args = parser.parse_args()

    for tool, package in (("chromium", "chromium"), ("chromedriver", "chromium-driver"), ("certutil", "libnss3-tools")):
        if shutil.which(tool) is None:
            print(f"{tool} not found: scripts/setup.sh installs Debian's {package}", file=sys.stderr)
            return 2
    try:
        import selenium  # noqa: F401
    except ImportError:
        print("selenium not found: scripts/setup.sh installs it into the test venv", file=sys.stderr)
        return 2

    report = {"steps": []}
    home = trusting_profile(args.work, args.ca)
    driver = browser(args, home)
    status = 0
    try:
        flow(args, driver, report)
    except FlowFailed as failed:
        report["failed"] = str(failed)
        driver.save_screenshot(os.path.join(args.logs, "browser-session-failed.png"))
        print(f"browser flow failed: {failed}", file=sys.stderr)
        status = 1
    finally:
        driver.quit()
    line = json.dumps(report)
    with open(os.path.join(args.logs, "browser-session-report.json"), "w") as out:
        out.write(line)
    print(line)
    return status


if __name__ == "__main__":
    sys.exit(main())
