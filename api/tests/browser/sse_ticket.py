"""A desktop's EventSource in a real browser (headless Chromium driven by
Playwright): opens the live stream with a single-use ticket, says `open` on
stdout, then waits for one `call.incoming` event and prints it as JSON.

Usage: sse_ticket.py BASE_URL TICKET CHROMIUM
"""

import json
import sys

from playwright.sync_api import sync_playwright

OPEN = """(ticket) => new Promise((resolve, reject) => {
  const es = new EventSource('/v1/stream?ticket=' + encodeURIComponent(ticket));
  window.__calls = [];
  es.addEventListener('call.incoming', (e) => {
    window.__calls.push({id: e.lastEventId, data: JSON.parse(e.data)});
  });
  es.onopen = () => resolve('open');
  es.onerror = () => reject(new Error('the stream failed, readyState ' + es.readyState));
})"""


def main():
    base, ticket, chromium = sys.argv[1], sys.argv[2], sys.argv[3]
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        page = browser.new_page()
        # Same origin as the API, so the stream needs no CORS.
        page.goto(base + "/healthz")
        page.evaluate(OPEN, ticket)
        print("open", flush=True)
        page.wait_for_function("window.__calls.length > 0", timeout=20_000)
        print(json.dumps(page.evaluate("window.__calls[0]")), flush=True)
        browser.close()


if __name__ == "__main__":
    main()
