"""The console in a real browser (headless Chromium driven by Playwright).

Usage: console.py CONFIG_JSON
CONFIG_JSON (from api/tests/console.rs) holds the base URL, the Chromium
path, the screenshot directory, the people and customers the test made and
their tokens. Each step prints `ok <step>` on stdout once it has seen what
it waits for; anything else raises, and the exit status says so. Waits are
for elements and events, with generous timeouts, never for time.

With "bench" in the config, it measures instead: keystroke to results in
the search box, and caller-ID lookup to popup, and prints one JSON line.
"""

import json
import statistics
import sys
import time
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

WAIT = 30_000  # ms: generous, for a loaded machine


def call_api(cfg, method, path, token, body=None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(cfg["base"] + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + token)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        text = response.read()
        return json.loads(text) if text else None


def step(name):
    print("ok " + name, flush=True)


class Shots:
    def __init__(self, directory):
        self.directory = directory

    def take(self, page, name):
        page.screenshot(path=f"{self.directory}/{name}.png")


def log_in(page, cfg, who):
    page.goto(cfg["base"] + "/")
    page.wait_for_selector("#email", timeout=WAIT)
    page.fill("#email", who["email"])
    page.fill("#password", who["password"])
    page.click("form.login button[type=submit]")
    page.wait_for_selector("body[data-page=home]", timeout=WAIT)
    # The incoming-call stream is open before any phone rings.
    page.wait_for_selector("#calls[data-live=true]", state="attached", timeout=WAIT)


def search(page, text):
    page.keyboard.press("/")
    page.fill("#search-input", "")
    page.type("#search-input", text)
    page.wait_for_selector(f'#search-results[data-query="{text}"]', timeout=WAIT)


def launch(p, cfg):
    return p.chromium.launch(
        executable_path=cfg["chromium"],
        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync"],
    )


def e2e(cfg):
    shots = Shots(cfg["screenshots"])
    agent, admin = cfg["agent"], cfg["admin"]
    narendra, priya = cfg["narendra"], cfg["priya"]
    with sync_playwright() as p:
        browser = launch(p, cfg)
        desk = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
        errors = []
        desk.on("pageerror", lambda e: errors.append(str(e)))

        desk.goto(cfg["base"] + "/")
        desk.wait_for_selector("#email", timeout=WAIT)
        shots.take(desk, "login-1366x768")
        log_in(desk, cfg, agent)
        step("log in")

        search(desk, "nare")
        first = desk.wait_for_selector("#search-results .hit .hit-name", timeout=WAIT)
        assert "Narendra" in first.inner_text(), first.inner_text()
        matched = desk.inner_text("#search-results .hit .hit-matched")
        assert "name" in matched, matched
        shots.take(desk, "search-1366x768")
        step("search nare")

        desk.keyboard.press("Enter")
        desk.wait_for_selector("body[data-page=customer]", timeout=WAIT)
        desk.wait_for_function(
            "name => document.querySelector('#customer-name')?.textContent === name",
            arg=narendra["name"], timeout=WAIT)
        desk.wait_for_selector(".timeline-card[data-live=true]", timeout=WAIT)
        desk.wait_for_selector(".engagement", timeout=WAIT)
        step("open customer")

        body = "Is the flat on Orchard Road still available?"
        call_api(cfg, "POST", "/v1/engagements", agent["token"], {
            "customer_id": narendra["id"], "channel": "sms", "direction": "inbound", "body": body})
        desk.wait_for_selector(f'.engagement.new .what:has-text("{body}")', timeout=WAIT)
        shots.take(desk, "customer-1366x768")
        step("live sms")

        # Inline edit: a bad email is refused with its field's error shown
        # beside it; the profile is saved once it is fixed.
        desk.click("#edit-profile")
        desk.fill("#f-emails", "narendra@example.com\nnot an email")
        desk.click("form.edit button[type=submit]")
        desk.wait_for_function(
            "() => document.querySelector('#e-emails')?.textContent.includes('line 2')", timeout=WAIT)
        assert desk.get_attribute("#f-emails", "aria-invalid") == "true"
        shots.take(desk, "customer-edit-error-1366x768")
        desk.fill("#f-emails", "narendra@example.com\nnarendra.k@example.com")
        desk.click("form.edit button[type=submit]")
        desk.wait_for_selector('.profile .emails:has-text("narendra.k@example.com")', timeout=WAIT)
        # The timeline by channel: calls only (there are none yet).
        desk.click('.filters button:has-text("Calls")')
        desk.wait_for_selector('.timeline li.muted:has-text("No engagements")', timeout=WAIT)
        assert desk.query_selector(".engagement") is None
        desk.click('.filters button:has-text("All")')
        desk.wait_for_selector(".engagement", timeout=WAIT)
        step("edit and filter")

        lookup = call_api(cfg, "GET", "/v1/mobile/caller-id?number=" + urllib.parse.quote(priya["phone"]),
                          agent["device_token"])
        assert lookup["customers"][0]["id"] == priya["id"], lookup
        popup = desk.wait_for_selector(f'.call[data-customer="{priya["id"]}"]', timeout=WAIT)
        assert priya["name"] in popup.inner_text(), popup.inner_text()
        shots.take(desk, "incoming-call-1366x768")
        desk.locator(f'.call[data-customer="{priya["id"]}"] button.open-caller').click(timeout=WAIT)
        desk.wait_for_function(
            "name => document.querySelector('#customer-name')?.textContent === name",
            arg=priya["name"], timeout=WAIT)
        step("call popup")

        # A reload keeps the session: the access token is gone with the
        # page, the refresh token renews it without a login.
        desk.reload()
        desk.wait_for_function(
            "name => document.querySelector('#customer-name')?.textContent === name",
            arg=priya["name"], timeout=WAIT)
        desk.wait_for_selector("#calls[data-live=true]", state="attached", timeout=WAIT)
        assert desk.query_selector("form.login") is None
        step("reload keeps the session")

        # A number nobody has: the popup offers to create the customer, and
        # the form it opens has the number in it.
        stranger = cfg["stranger"]
        lookup = call_api(cfg, "GET", "/v1/mobile/caller-id?number=" + urllib.parse.quote(stranger["phone"]),
                          agent["device_token"])
        assert lookup == {"known": False, "customers": []}, lookup
        unknown = desk.wait_for_selector('.call[data-customer=""]:has-text("Unknown caller")', timeout=WAIT)
        assert stranger["phone"] in unknown.inner_text(), unknown.inner_text()
        shots.take(desk, "unknown-caller-1366x768")
        desk.locator('.call[data-customer=""] button.create-caller').click(timeout=WAIT)
        desk.wait_for_selector("body[data-page=new]", timeout=WAIT)
        assert desk.input_value("#n-phones") == stranger["phone"], desk.input_value("#n-phones")
        desk.fill("#n-name", stranger["name"])
        desk.click("form.edit button[type=submit]")
        desk.wait_for_function(
            "name => document.querySelector('#customer-name')?.textContent === name",
            arg=stranger["name"], timeout=WAIT)
        assert stranger["phone"] in desk.inner_text(".profile .phones")
        step("unknown caller created")

        # The access token has expired: the server answers 401, the console
        # renews it with the refresh token and the search still shows its
        # results, without a login. (The first search request carries an
        # expired token, as it would once its time is up.)
        expired = []
        def send_expired(route, request):
            if expired:
                route.continue_()
                return
            expired.append(request.url)
            headers = dict(request.headers)
            headers["authorization"] = "Bearer " + agent["expired_token"]
            route.continue_(headers=headers)
        answers = []
        desk.on("response", lambda r: answers.append((r.url, r.status)))
        desk.route("**/v1/search?*", send_expired)
        search(desk, "narendra")
        hit = desk.wait_for_selector("#search-results .hit .hit-name", timeout=WAIT)
        assert "Narendra" in hit.inner_text(), hit.inner_text()
        desk.unroute("**/v1/search?*")
        assert expired, "no search request was sent with the expired token"
        assert any(url == expired[0] and status == 401 for url, status in answers), answers
        assert any(url.endswith("/v1/auth/refresh") and status == 200 for url, status in answers), answers
        assert desk.query_selector("form.login") is None
        desk.keyboard.press("Escape")
        step("expired token refreshed silently")

        # An admin, on a wide screen: merge Priya's duplicate into her, then undo.
        boss = browser.new_context(viewport={"width": 1920, "height": 1080}).new_page()
        boss.on("pageerror", lambda e: errors.append(str(e)))
        log_in(boss, cfg, admin)
        boss.goto(cfg["base"] + "/#/customers/" + priya["id"])
        boss.wait_for_selector("#merge-query", timeout=WAIT)
        boss.fill("#merge-query", cfg["duplicate"]["email"])
        boss.click("#merge-title + form button[type=submit]")
        boss.click(".merge-results button.link", timeout=WAIT)
        boss.wait_for_selector("#confirm-merge", timeout=WAIT)
        shots.take(boss, "merge-preview-1920x1080")
        boss.click("#confirm-merge")
        boss.wait_for_selector(".history button.undo", timeout=WAIT)
        shots.take(boss, "customer-merged-1920x1080")
        # A locator, not a handle: the history is drawn again as the
        # merge's event arrives.
        boss.locator(".history button.undo").click(timeout=WAIT)
        boss.wait_for_selector('.history li:has-text("Undone")', timeout=WAIT)
        boss.wait_for_selector(".history button.undo", state="detached", timeout=WAIT)
        step("merge and undo")

        # An identifier marked shared shows the mark; unmarked, it goes.
        ident = f'.identifiers li[data-identifier="phone:{priya["phone"]}"]'
        boss.wait_for_selector(f'{ident}[data-shared=false]', timeout=WAIT)
        boss.locator(f"{ident} button.toggle-shared").click(timeout=WAIT)
        boss.wait_for_selector(f'{ident}[data-shared=true] .badge.shared', timeout=WAIT)
        assert boss.inner_text(f"{ident} button.toggle-shared") == "Unmark shared"
        shots.take(boss, "identifier-shared-1920x1080")
        boss.locator(f"{ident} button.toggle-shared").click(timeout=WAIT)
        boss.wait_for_selector(f'{ident}[data-shared=false]', timeout=WAIT)
        assert boss.query_selector(f"{ident} .badge.shared") is None
        step("mark shared")

        # A suggested pair, dismissed: gone from the list, and after a reload.
        pair = ",".join(cfg["similar"]["pair"])
        boss.goto(cfg["base"] + "/#/duplicates")
        boss.wait_for_selector(f'.pair[data-pair="{pair}"]', timeout=WAIT)
        shots.take(boss, "duplicates-1920x1080")
        boss.locator(f'.pair[data-pair="{pair}"] button.dismiss').click(timeout=WAIT)
        boss.wait_for_selector(f'.pair[data-pair="{pair}"]', state="detached", timeout=WAIT)
        boss.reload()
        boss.wait_for_selector("body[data-page=duplicates]", timeout=WAIT)
        boss.wait_for_selector('.pairs p.muted:has-text("No suggestions")', timeout=WAIT)
        step("dismiss duplicates")

        boss.goto(cfg["base"] + "/#/board")
        boss.wait_for_selector(".board[data-live=true]", timeout=WAIT)
        row = f'#board-rows tr[data-agent="user:{agent["id"]}"] .value'
        boss.wait_for_selector(row, timeout=WAIT)
        before = int(boss.inner_text(row))
        call_api(cfg, "POST", "/v1/engagements", agent["token"], {
            "customer_id": narendra["id"], "channel": "call", "direction": "outbound",
            "duration_s": 95, "status": "answered"})
        boss.wait_for_function(
            "([sel, before]) => Number(document.querySelector(sel)?.textContent) > before",
            arg=[row, before], timeout=WAIT)
        shots.take(boss, "wall-board-1920x1080")
        step("wall board")

        for page, name in [("#/devices", "devices"),
                           ("#/admin/keys", "admin-keys"), ("#/admin/webhooks", "admin-webhooks")]:
            boss.goto(cfg["base"] + "/" + page)
            boss.wait_for_selector("main .card h1", timeout=WAIT)
            shots.take(boss, f"{name}-1920x1080")
        boss.goto(cfg["base"] + "/#/admin/users")
        boss.wait_for_selector(f'tr[data-email="{agent["email"]}"] button.deactivate', timeout=WAIT)
        shots.take(boss, "admin-users-1920x1080")
        boss.locator(f'tr[data-email="{agent["email"]}"] button.deactivate').click(timeout=WAIT)
        boss.wait_for_selector(f'tr[data-email="{agent["email"]}"] button.deactivate',
                               state="detached", timeout=WAIT)
        desk.wait_for_selector("form.login", timeout=60_000)
        message = desk.inner_text("#login-error")
        assert "session has ended" in message, message
        shots.take(desk, "logged-out-1366x768")
        step("deactivated user logged out")

        assert not errors, errors
        browser.close()


TIME_KEYSTROKE = """(query) => {
  const input = document.getElementById('search-input');
  const list = document.getElementById('search-results');
  window.__typed = null;
  window.__shown = null;
  input.addEventListener('keydown', () => { window.__typed = performance.now(); }, {once: true});
  const watch = new MutationObserver(() => {
    if (list.dataset.query === query) {
      window.__shown = performance.now();
      watch.disconnect();
    }
  });
  watch.observe(list, {attributes: true, childList: true});
}"""


def percentile(values, p):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def bench(cfg):
    agent = cfg["agent"]
    rounds = cfg["bench"]["rounds"]
    queries = cfg["bench"]["queries"]
    numbers = cfg["bench"]["numbers"]
    with sync_playwright() as p:
        browser = launch(p, cfg)
        page = browser.new_context(viewport={"width": 1366, "height": 768}).new_page()
        page.on("console", lambda m: print("console: " + m.text, file=sys.stderr, flush=True))
        log_in(page, cfg, agent)
        keystroke = []
        for i in range(rounds):
            query = queries[i % len(queries)]
            page.keyboard.press("/")
            page.fill("#search-input", query[:-1])
            page.wait_for_selector(f'#search-results[data-query="{query[:-1]}"]', timeout=WAIT)
            # Timed in the page: from the key's keydown to the results of
            # the whole query in the list (after the debounce and the search).
            page.evaluate(TIME_KEYSTROKE, query)
            page.keyboard.type(query[-1])
            page.wait_for_selector(f'#search-results[data-query="{query}"]', timeout=WAIT)
            keystroke.append(page.evaluate("window.__shown - window.__typed"))
        page.keyboard.press("Escape")
        popup = []
        for i in range(rounds):
            number, customer = numbers[i % len(numbers)]
            page.evaluate("document.getElementById('calls').replaceChildren()")
            started = time.perf_counter()
            found = call_api(cfg, "GET", "/v1/mobile/caller-id?number=" + urllib.parse.quote(number),
                             agent["device_token"])
            try:
                page.wait_for_selector(f'.call[data-customer="{customer}"]', timeout=WAIT)
            except Exception:
                print(f"round {i}: no popup for {number} ({customer}); caller-ID said {found}; "
                      f"popups: {page.inner_html('#calls')}", file=sys.stderr, flush=True)
                raise
            popup.append((time.perf_counter() - started) * 1000)
        browser.close()
    summary = {}
    for name, values in [("keystroke_to_results_ms", keystroke), ("lookup_to_popup_ms", popup)]:
        summary[name] = {"n": len(values), "p50": round(statistics.median(values), 1),
                         "p95": round(percentile(values, 95), 1), "max": round(max(values), 1)}
    print(json.dumps(summary), flush=True)


def main():
    cfg = json.loads(sys.argv[1])
    if "bench" in cfg:
        bench(cfg)
    else:
        e2e(cfg)


if __name__ == "__main__":
    main()
