#!/usr/bin/env python3
"""Drives the browser example's pages in headless Chromium over WebDriver (plain HTTP requests to
chromedriver) and checks what they log.

1. Through the server: page B signs in at ws_server; page A signs in, lists B, and opens a data
   channel to B through the server. Both must receive the other's hello on it.
2. Hosted: page B hosts signalling; pages A and C sign in at ws_server, then at B's signalling
   over data channels. The server is stopped; A then opens a data channel to C through B. Both
   must receive the other's hello.

Everything listens on 127.0.0.1; every wait has a deadline. Run by scripts/browser-example.sh.
"""

import argparse
import functools
import http.server
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request

WITHIN = 60.0  # seconds for any one step


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """One chromedriver; one session (one browser) per page."""

    def __init__(self, binary):
        self.port = free_port()
        self.process = subprocess.Popen(
            [binary, f"--port={self.port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.wait_for(lambda: self.request("GET", "/status").get("value", {}).get("ready"), "chromedriver")

    def request(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method)
        req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=WITHIN) as response:
                return json.load(response)
        except (ConnectionError, urllib.error.URLError):
            return {}

    @staticmethod
    def wait_for(check, what):
        deadline = time.monotonic() + WITHIN
        while time.monotonic() < deadline:
            result = check()
            if result:
                return result
            time.sleep(0.1)
        raise TimeoutError(f"{what}: not within {WITHIN} s")

    def open(self, url):
        args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-dev-shm-usage",
            # Host candidates as loopback addresses, not mDNS names nothing here resolves.
            "--disable-features=WebRtcHideLocalIpsWithMdns",
        ]
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {"args": args}}}}
        session = self.request("POST", "/session", caps)["value"]["sessionId"]
        self.request("POST", f"/session/{session}/url", {"url": url})
        return session

    def log(self, session):
        script = {"script": "return document.getElementById('log').textContent", "args": []}
        return self.request("POST", f"/session/{session}/execute/sync", script).get("value") or ""

    def close(self, session):
        self.request("DELETE", f"/session/{session}")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=WITHIN)


def start_server(binary):
    server = subprocess.Popen(
        [binary, "--listen", "127.0.0.1:0", "--metrics", "off"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={"RUST_LOG": "info", "NO_COLOR": "1"},
    )
    deadline = time.monotonic() + WITHIN
    for line in server.stdout:
        found = re.search(r"signalling on (ws://[0-9.]+:[0-9]+)", line)
        if found:
            # Keep reading its log, so that it never blocks on a full pipe.
            threading.Thread(target=lambda: [None for _ in server.stdout], daemon=True).start()
            return server, found.group(1)
        if time.monotonic() > deadline:
            break
    server.kill()
    raise RuntimeError("ws_server did not say where it listens")


def stop_server(server):
    server.terminate()
    server.wait(timeout=WITHIN)


def serve(site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=site)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/index.html"


def wait_logs(driver, pages, expected, what):
    """Waits until each page's log has its expected lines; returns the logs."""

    def done():
        logs = {name: driver.log(session) for name, session in pages.items()}
        return logs if all(line in logs[name] for name, lines in expected.items() for line in lines) else None

    try:
        return driver.wait_for(done, what)
    except TimeoutError:
        for name, session in pages.items():
            print(f"--- page {name} (at the timeout)\n{driver.log(session)}", file=sys.stderr)
        raise


def print_logs(title, logs):
    print(f"=== {title}")
    for name, log in logs.items():
        print(f"--- page {name}\n{log}", end="")


def through_the_server(driver, page_url, ws_server):
    server, url = start_server(ws_server)
    pages = {}
    try:
        pages["B"] = driver.open(f"{page_url}?name=B&server={url}")
        wait_logs(driver, pages, {"B": ["B: the server lists"]}, "B signs in")
        pages["A"] = driver.open(f"{page_url}?name=A&server={url}&connect=B")
        logs = wait_logs(
            driver,
            pages,
            {
                "A": ['A: received "hello from B" from B', "A: app channel open to B"],
                "B": ['B: received "hello from A" from A', "B: app channel open to A"],
            },
            "A and B open a channel through the server",
        )
        print_logs("through ws_server", logs)
    finally:
        for session in pages.values():
            driver.close(session)
        stop_server(server)


def hosted(driver, page_url, ws_server):
    server, url = start_server(ws_server)
    pages = {}
    try:
        pages["B"] = driver.open(f"{page_url}?name=B&server={url}&role=host&codec=bincode")
        wait_logs(driver, pages, {"B": ["B: hosting signalling"]}, "B hosts")
        pages["C"] = driver.open(f"{page_url}?name=C&server={url}&via=B&codec=bincode")
        pages["A"] = driver.open(f"{page_url}?name=A&server={url}&via=B&connect=C&codec=bincode")
        wait_logs(
            driver,
            pages,
            {"A": ["A: signed in via B"], "C": ["C: signed in via B"]},
            "A and C sign in at B's signalling",
        )
        stop_server(server)
        logs = wait_logs(
            driver,
            pages,
            {
                "A": ["A: the server is gone", 'A: received "hello from C" from C'],
                "C": ['C: received "hello from A" from A'],
            },
            "A and C open a channel through B",
        )
        print_logs("hosted by page B, ws_server stopped", logs)
    finally:
        for session in pages.values():
            driver.close(session)
        if server.poll() is None:
            stop_server(server)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--site", required=True)
    parser.add_argument("--ws-server", required=True)
    parser.add_argument("--chromedriver", required=True)
    args = parser.parse_args()
    httpd, page_url = serve(args.site)
    driver = WebDriver(args.chromedriver)
    try:
        through_the_server(driver, page_url, args.ws_server)
        hosted(driver, page_url, args.ws_server)
    finally:
        driver.stop()
        httpd.shutdown()


if __name__ == "__main__":
    main()
