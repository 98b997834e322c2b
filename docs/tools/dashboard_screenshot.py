"""Screenshot a page of a running Ray dashboard, as a user's browser shows it (docs/watching.md).

    python docs/tools/dashboard_screenshot.py --page actors --wait-for matcher- --out docs/dashboard_actors.png

Not part of the package or the tests: it needs Debian's `chromium` and `chromium-driver` and
`pip install selenium` (in any environment; it does not import idc_ray or Ray). Ray 2.60's
dashboard opens on its "Authentication Token Required" dialog; the script types the token into
it as a user would, from $RAY_AUTH_TOKEN, else $RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (what
`ray get-auth-token` prints), then waits for the page to show ``--wait-for`` and takes the shot.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

DIALOG = "token-auth-dialog-title"  # the id of the dialog's title in Ray 2.60's dashboard


def token() -> str | None:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"]
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    return path.read_text().strip() if path.is_file() else None


def browser(width: int, height: int) -> webdriver.Chrome:
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                 f"--window-size={width},{height}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8265")
    p.add_argument("--page", default="actors", help="the part after #/ (actors, jobs, cluster, ...)")
    p.add_argument("--wait-for", default="", help="text the page must show before the shot (e.g. matcher-)")
    p.add_argument("--timeout", type=float, default=60.0)
    p.add_argument("--size", default="1600x1000", help="window WIDTHxHEIGHT")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    width, height = (int(v) for v in args.size.split("x"))
    driver = browser(width, height)
    try:
        driver.get(f"{args.url}/#/{args.page}")
        secret = token()

        def ready(d) -> bool:
            dialogs = d.find_elements(By.ID, DIALOG)
            if dialogs and secret:  # sign in as a user does: the token into the dialog, Enter
                field = d.find_element(By.CSS_SELECTOR, "div[role=dialog] input")
                field.clear()
                field.send_keys(secret + Keys.ENTER)
                return False
            return not dialogs and args.wait_for in d.find_element(By.TAG_NAME, "body").text

        try:
            WebDriverWait(driver, args.timeout, poll_frequency=2).until(ready)
        except TimeoutException:
            print(f"error: the {args.page} page did not show '{args.wait_for}' within {args.timeout:g} s; "
                  "is the job running and the token right?", file=sys.stderr)
            return 1
        tmp = Path(args.out).with_suffix(".tmp.png")
        driver.save_screenshot(str(tmp))
        tmp.replace(args.out)
    finally:
        driver.quit()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
