"""The egress report: pipelock's JSON log in, hosts reached and requests blocked out, with the fix."""

import json
import tomllib
import unittest
from pathlib import Path

from tests import guard
from tests.guard import cb

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

# Lines as the real pipelock 2.3.0 writes them (see shared/reference/pipelock.md), plus noise.
LOG = "\n".join([
    "pipelock 2.3.0 starting",  # a plain-text banner
    json.dumps({"level": "warn", "event": "anomaly", "message": "listen address is not loopback"}),
    json.dumps({"level": "info", "event": "startup", "listen": "0.0.0.0:8888", "mode": "strict"}),
    json.dumps({"event": "tunnel_open", "target": "web:8000", "client_ip": "172.21.0.3"}),
    json.dumps({"event": "tunnel_close", "target": "web:8000", "total_bytes": 300, "duration_ms": 4}),
    json.dumps({"event": "forward_http", "method": "GET", "url": "http://web:8000/", "status_code": 200}),
    json.dumps({"event": "tunnel_open", "target": "API.anthropic.com:443"}),
    json.dumps({"level": "warn", "event": "blocked", "method": "CONNECT", "target": "other:8000",
                "scanner": "allowlist", "reason": "domain not in allowlist: other"}),
    json.dumps({"event": "blocked", "method": "GET", "url": "http://other:8000/x", "scanner": "allowlist",
                "reason": "domain not in allowlist: other"}),
    json.dumps({"event": "blocked", "method": "CONNECT", "target": "notrusted:8000", "scanner": "ssrf",
                "reason": "SSRF blocked: notrusted resolves to internal IP 172.20.0.3"}),
    json.dumps({"event": "blocked", "method": "CONNECT", "target": "[::1]:22", "scanner": "ssrf",
                "reason": "SSRF blocked"}),
    "{not json",
    json.dumps(["not", "an", "event"]),
])


class Report(unittest.TestCase):
    def plan(self, config=None, bottle="web"):
        text = config or ('[bottles.web]\nallow = ["web", "notrusted"]\ntrusted = ["web"]\n'
                          '[agents.a]\nbottle = "web"\n')
        cfg = cb.parse_config(tomllib.loads(text), "/p/claude-bottle.toml") if bottle != "default" else cb.Config()
        return cb.resolve_plan(cfg, "a" if bottle != "default" else None, cwd=guard.ROOT, suffix="0a1b2c",
                               environ={"HOME": "/nonexistent"})

    def test_parse_skips_what_is_not_an_event(self):
        events = cb.parse_events(LOG)
        self.assertEqual(len(events), 10)
        self.assertTrue(all("event" in e for e in events))

    def test_counts_per_host(self):
        report = cb.egress_report(cb.parse_events(LOG))
        self.assertEqual(report["reached"], [{"host": "api.anthropic.com", "count": 1}, {"host": "web", "count": 2}])
        self.assertEqual(report["blocked"], [
            {"host": "::1", "scanner": "ssrf", "reason": "SSRF blocked", "count": 1},
            {"host": "notrusted", "scanner": "ssrf",
             "reason": "SSRF blocked: notrusted resolves to internal IP 172.20.0.3", "count": 1},
            {"host": "other", "scanner": "allowlist", "reason": "domain not in allowlist: other", "count": 2},
        ])

    def test_render_gives_the_lines_to_set(self):
        lines = cb.render_report(self.plan(), cb.egress_report(cb.parse_events(LOG)))
        text = "\n".join(lines)
        self.assertIn("reached: api.anthropic.com (1), web (2)", text)
        self.assertIn("other (2) allowlist: domain not in allowlist: other", text)
        self.assertIn("set in /p/claude-bottle.toml, under [bottles.web]:", text)
        allow = next(line for line in lines if line.strip().startswith("allow ="))
        trusted = next(line for line in lines if line.strip().startswith("trusted ="))
        # Each suggestion is a valid TOML line that keeps what the bottle had.
        self.assertEqual(tomllib.loads(allow.strip()), {"allow": ["web", "notrusted", "other"]})
        self.assertEqual(tomllib.loads(trusted.strip()), {"trusted": ["web", "notrusted"]})
        self.assertNotIn("::1", allow, "an address that is no hostname is never suggested")

    def test_nothing_blocked(self):
        lines = cb.render_report(self.plan(), cb.egress_report([]))
        self.assertEqual(lines[1:], ["  reached: nothing", "  blocked: nothing"])

    def test_without_a_config_file(self):
        lines = cb.render_report(self.plan(bottle="default"), cb.egress_report(cb.parse_events(LOG)))
        self.assertIn("  to allow notrusted, other, set in claude-bottle.toml, under [bottles.default]:", lines)
        self.assertIn("  (no config file yet: create claude-bottle.toml with that table)", lines)

    def test_render_event_lines(self):
        rendered = [cb.render_event(e) for e in cb.parse_events(LOG)]
        self.assertIn("--:--:-- blocked  CONNECT other:8000  (allowlist: domain not in allowlist: other)", rendered)
        self.assertIn("--:--:-- allowed  GET http://web:8000/ -> 200", rendered)
        self.assertIn("--:--:-- closed   web:8000 (300 bytes, 4 ms)", rendered)


# pipelock 2.3.0's own lines for a GitHub token leaving over plain HTTP in a header (two), the body and the URL.
REAL = (Path(__file__).resolve().parent.parent / "fixtures" / "pipelock-2.3.0-events.jsonl").read_text()
SECRET = "ghp_A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"


class DlpReport(unittest.TestCase):
    def test_the_fixture_holds_the_secret_as_pipelock_logged_it(self):
        self.assertIn(SECRET, REAL, "the real core_dlp line logs the URL with the secret in it")

    def test_dlp_refusals_count_as_blocked_by_dlp(self):
        report = cb.egress_report(cb.parse_events(REAL))
        dlp = [b for b in report["blocked"] if b["scanner"] == "dlp"]
        self.assertEqual(dlp, [
            {"host": "web", "scanner": "dlp", "reason": "core DLP match: GitHub Token (critical)", "count": 1},
            {"host": "web", "scanner": "dlp", "reason": "secret in the request body: GitHub Token", "count": 1},
            {"host": "web", "scanner": "dlp", "reason": "secret in the request header Authorization: GitHub Token",
             "count": 1},
            {"host": "web", "scanner": "dlp", "reason": "secret in the request header X-Custom: GitHub Token",
             "count": 1},
        ])

    def test_a_warning_is_no_refusal(self):
        warned = dict(json.loads(REAL.splitlines()[-2]), action="warn")
        self.assertEqual(cb.egress_report([warned])["blocked"], [])
        self.assertIn("let through", cb.render_event(warned))

    def test_no_line_and_no_report_shows_the_secret(self):
        events = cb.parse_events(REAL)
        rendered = [cb.render_event(e) for e in events]
        self.assertNotIn(SECRET, "\n".join(rendered))
        self.assertNotIn(SECRET, json.dumps(events), "`logs --json` prints these events")
        self.assertIn("--:--:-- blocked  GET http://web:8000/[withheld]  (dlp: core DLP match: GitHub Token "
                      "(critical))".replace("--:--:--", "01:00:05"), rendered)
        plan = Report.plan(Report())
        self.assertNotIn(SECRET, "\n".join(cb.render_report(plan, cb.egress_report(events))))

    def test_a_dlp_refusal_suggests_no_config_change(self):
        events = [e for e in cb.parse_events(REAL) if cb._is_dlp(e)]
        plan = Report.plan(Report(), '[bottles.web]\nallow = ["web"]\n[agents.a]\nbottle = "web"\n')
        lines = cb.render_report(plan, cb.egress_report(events))
        self.assertFalse([line for line in lines if "trusted =" in line or "allow =" in line], lines)

    def test_withheld_url_keeps_host_and_port_only(self):
        for url, want in (("http://u:ghp_x@web:8000/a/ghp_y?k=ghp_z#f", "http://web:8000/[withheld]"),
                          ("http://[::1]/x", "http://[::1]/[withheld]"), ("not a url", "[withheld]"),
                          ("http://[bad/", "[withheld]")):
            self.assertEqual(cb._withhold_url(url), want)


class SsrfReport(unittest.TestCase):
    """pipelock's SSRF check refuses a private address and a name that did not resolve, with one scanner: only a
    private address gets the `trusted` advice (real 2.3.0 lines)."""

    def events(self, needle):
        return [e for e in cb.parse_events(REAL) if e.get("scanner") == "ssrf" and needle in e["reason"]]

    def render(self, events, learn=False):
        text = '[bottles.web]\nallow = ["web", "notrusted", "nothing-here.example.test"]\n[agents.a]\nbottle = "web"\n'
        plan = Report.plan(Report(), text)._replace(learn=learn)
        return cb.render_report(plan, cb.egress_report(events))

    def test_a_name_that_did_not_resolve_gets_no_trusted_advice(self):
        events = self.events("DNS resolution error")
        self.assertEqual(len(events), 2, "the fixture holds the GET and the CONNECT")
        lines = self.render(events)
        self.assertIn("  blocked: nothing-here.example.test (2) ssrf: SSRF check failed: DNS resolution error for "
                      "nothing-here.example.test: lookup nothing-here.example.test on 127.0.0.11:53: no such host",
                      lines)
        self.assertIn("  nothing-here.example.test did not resolve (offline, a typo, or no such name): no config "
                      "change fixes that", lines)
        self.assertFalse([line for line in lines if "trusted" in line or "allow =" in line or "private" in line],
                         lines)

    def test_a_private_address_keeps_the_trusted_advice(self):
        lines = self.render(self.events("resolves to internal IP"))
        self.assertIn('    trusted = ["notrusted"]', lines)
        self.assertFalse([line for line in lines if "did not resolve" in line], lines)

    def test_both_in_one_session(self):
        lines = self.render(self.events("SSRF"))
        self.assertIn('    trusted = ["notrusted"]', lines)
        self.assertIn("  to let notrusted resolve to private addresses, set in /p/claude-bottle.toml, under "
                      "[bottles.web]:", lines)
        self.assertIn("  nothing-here.example.test did not resolve (offline, a typo, or no such name): no config "
                      "change fixes that", lines)

    def test_learn_mode_proposes_no_trusted_for_it(self):
        events = self.events("SSRF")
        report = cb.egress_report(events)
        self.assertEqual(cb.learned_trusted(report), ["notrusted"])
        lines = self.render(events, learn=True)
        self.assertIn('    trusted = ["notrusted"]', lines)
        self.assertIn("  nothing-here.example.test did not resolve (offline, a typo, or no such name): no config "
                      "change fixes that", lines)


if __name__ == "__main__":
    unittest.main()
