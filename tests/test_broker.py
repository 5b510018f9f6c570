"""The credential broker's configuration: validation of [[bottles.NAME.credentials]], the endpoints a session
brokers, the headers that go upstream and the bottle's environment. Pure functions: no network, no docker.
"""

import subprocess
import sys
import tempfile
import tomllib
import unittest
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import claude_bottle as cb  # noqa: E402
from tests import guard  # noqa: E402
from tests.test_hostile import toml_str, toml_value  # noqa: E402

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

SECRET = "sk-test-SECRET-0123456789abcdef"
OAUTH = "sk-ant-oat01-TEST-SECRET-fedcba9876543210"
WHERE = "/cfg/claude-bottle.toml: [[bottles.web.credentials]]"


# ---- Helpers ----

def credential(**kw) -> cb.Credential:
    fields = dict(env="GITHUB_TOKEN", host="api.github.test", header="Authorization", format="Bearer {}",
                  base_url_env="GITHUB_API_URL", upstream=None, ca_file=None, git=False)
    fields.update(kw)
    return cb.Credential(**fields)


def headers_named(headers, name):
    return [v for n, v in headers if n.lower() == name.lower()]


# ---- Validation: every mistake is one line naming the entry and the key ----

GOOD = {"env": "GITHUB_TOKEN", "host": "api.github.com", "header": "Authorization", "format": "Bearer {}",
        "base_url_env": "GITHUB_API_URL"}
BAD_NAMES = ["A-B", "1X", "", "A B", "A\nB", "$A", "\u00c4B", "A" * 129, 1, True, ["X"]]
CASES = []  # (class, label, entries or a TOML value, needle)


def case(cls, label, entries, needle):
    CASES.append((cls, label, entries, needle))


def with_(**kw):
    return [{**GOOD, **kw}]


for key in ("hots", "value", "secret", "url", "Host", "headers", "verify"):
    case("unknown key", key, [{**GOOD, key: "x"}], f"#1: unknown key '{key}'")
for key in ("env", "host", "header", "base_url_env"):
    case("missing key", key, [{k: v for k, v in GOOD.items() if k != key}], f"#1: missing {key}")
for value in BAD_NAMES + ["HTTPS_PROXY", "HOME", "PATH", "LD_PRELOAD", "GIT_CONFIG_KEY_0", "ANTHROPIC_BASE_URL"]:
    case("env", repr(value), with_(env=value), "#1 env:")
for value in ["https://api.github.com", "api.github.com:443", "*.github.com", "", "api.github.com/x", "user@gh.com",
              "\uff41pi.github.com", "api.github.com\n", "api..github.com", "[::1]", 1, ["a"]]:
    case("host", repr(value), with_(host=value), "#1 host:")
for value in ["Authorization:", "x api key", "", "X-Key\r\nX-Evil: 1", "Host", "content-length", "Transfer-Encoding",
              "Connection", "Proxy-Authorization", "Upgrade", "te", "Expect", "\u00e4", 1]:
    case("header", repr(value), with_(header=value), "#1 header:")
for value in ["Bearer", "{} {}", "Bearer {}\r\n", "Bearer {}\n", "Bearer {}\x00", "\x1b{}", "\u00e9{}", "", "{0}",
              "Bearer {}\r\nX-Evil: 1", 1, ["{}"]]:
    case("format", repr(value), with_(format=value), "#1 format:")
for value in BAD_NAMES + ["GITHUB_TOKEN", "HTTP_PROXY", "NO_PROXY", "SSH_AUTH_SOCK", "ANTHROPIC_BASE_URL",
                          "ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "LD_PRELOAD", "GIT_CONFIG_COUNT",
                          "GIT_CONFIG_VALUE_3", "NODE_OPTIONS"]:
    case("base_url_env", repr(value), with_(base_url_env=value), "#1 base_url_env:")
for value in ["http://10.1.2.3", "10.1.2.3:8443", "https://user:pw@10.1.2.3", "https://10.1.2.3/v1",
              "https://10.1.2.3?x=1", "https://10.1.2.3#f", "https://10.1.2.3:0", "https://10.1.2.3:65536",
              "https://10.1.2.3:", "https://10.1.2.3:+443", "https://10.1.2.3: 443", "https://[::1]:443",
              "https://*.example.com", "https://evil.example\\@good.example", "HTTPS://10.1.2.3", "https://",
              "https://10.1.2.3:443:1", "https://a b", "https://256.1.1.1", "https://x.example//", "ftp://x.example",
              "https://x.example\n", 1, ["https://x.example"]]:
    case("upstream", repr(value), with_(upstream=value), "#1 upstream:")
for value in ["missing.pem", ".", "notpem.txt", "", 1, "a\nb"]:
    case("ca_file", repr(value), with_(ca_file=value), "#1 ca_file:")
for value in ["yes", "true", 1, 0, ["x"]]:
    case("git", repr(value), with_(git=value), "#1 git:")
case("twice", "same env", [GOOD, {**GOOD, "base_url_env": "OTHER_URL"}], "#2 env:")
case("twice", "same base_url_env", [GOOD, {**GOOD, "env": "OTHER_TOKEN"}], "#2 base_url_env:")
case("twice", "env of #2 is base_url_env of #1", [GOOD, {**GOOD, "env": "GITHUB_API_URL", "base_url_env": "X_URL"}],
     "#2 env:")
case("twice", "git twice for one host", [{**GOOD, "git": True}, {**GOOD, "env": "T2", "base_url_env": "U2",
                                                                 "git": True}], "#2 git:")
OAUTH_ENTRY = {"env": "CLAUDE_CODE_OAUTH_TOKEN", "header": "Authorization", "base_url_env": "ANTHROPIC_BASE_URL"}
case("subscription token", "to another host", [{**OAUTH_ENTRY, "host": "llm.corp.example"}], "#1 host:")
case("subscription token", "to a mirror",
     [{**OAUTH_ENTRY, "host": "api.anthropic.com", "upstream": "https://10.1.2.3"}], "#1 host:")
case("replacing a built-in", "with another base_url_env",
     with_(env="ANTHROPIC_API_KEY", header="x-api-key", base_url_env="CORP_LLM_URL"), "#1 base_url_env:")
case("structure", "credentials is a string", "x", WHERE + ": expected an array")
case("structure", "credentials is a table", {"env": "X"}, WHERE + ": expected an array")
case("structure", "an entry is a string", ["x"], WHERE + " #1: expected a table")


class ValidationTest(unittest.TestCase):
    def setUp(self):
        tmp = tempfile.TemporaryDirectory(prefix="cb-broker-cfg-")
        self.addCleanup(tmp.cleanup)
        self.base = Path(tmp.name).resolve()
        (self.base / "notpem.txt").write_text("not a certificate\n")
        (self.base / "corp-ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")

    def parse(self, value):
        """`value` as the TOML a user writes: [[bottles.web.credentials]] tables, or `credentials = value`."""
        if isinstance(value, list) and all(isinstance(e, dict) for e in value):
            doc = "".join("[[bottles.web.credentials]]\n" + "".join(f"{toml_str(k)} = {toml_value(v)}\n"
                                                                      for k, v in e.items()) for e in value)
        else:
            doc = f"[bottles.web]\ncredentials = {toml_value(value)}\n"
        entries = tomllib.loads(doc)["bottles"]["web"]["credentials"] if value else []
        return cb.parse_credentials(entries, WHERE, self.base)

    def test_the_table_is_large_enough(self):
        self.assertGreaterEqual(len(CASES), 120)

    def test_every_case_is_a_one_line_config_error_naming_the_field(self):
        for cls, label, value, needle in CASES:
            with self.subTest(cls=cls, case=label):
                with self.assertRaises(cb.ConfigError) as e:
                    self.parse(value)
                msg = str(e.exception)
                self.assertEqual(e.exception.status, 2)
                self.assertNotIn("\n", msg)
                self.assertTrue(msg.isprintable(), repr(msg))
                self.assertIn(needle, msg)
                self.assertTrue(msg.startswith(WHERE), msg)

    def test_the_documented_example(self):
        (c,) = self.parse([{**GOOD, "upstream": "https://10.1.2.3:8443", "ca_file": "corp-ca.pem", "git": True}])
        self.assertEqual(c, cb.Credential("GITHUB_TOKEN", "api.github.com", "Authorization", "Bearer {}",
                                          "GITHUB_API_URL", ("10.1.2.3", 8443), str(self.base / "corp-ca.pem"), True))
        (c,) = self.parse([{k: v for k, v in GOOD.items() if k != "format"} | {"upstream": "https://Mirror.test/"}])
        self.assertEqual((c.format, c.upstream, c.ca_file, c.git), ("{}", ("mirror.test", 443), None, False))
        (c,) = self.parse([GOOD])
        self.assertEqual(c.upstream, ("api.github.com", 443))
        self.assertEqual(self.parse([]), ())

    def test_a_builtin_may_be_replaced(self):
        (c,) = self.parse([{"env": "ANTHROPIC_API_KEY", "host": "llm.corp.example", "header": "x-api-key",
                            "base_url_env": "ANTHROPIC_BASE_URL"}])
        self.assertEqual((c.env, c.host), ("ANTHROPIC_API_KEY", "llm.corp.example"))


# ---- Pure parts: endpoints, headers, the bottle's environment ----

class EndpointTest(unittest.TestCase):
    def test_the_api_key_wins_over_the_oauth_token(self):
        (ep,) = cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": SECRET, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
        self.assertEqual(ep, cb.Endpoint(
            index=0, host="api.anthropic.com", upstream=("https", "api.anthropic.com", 443), header="x-api-key",
            format="{}", strip=("authorization", "x-api-key"), beta=None, base_url_env="ANTHROPIC_BASE_URL",
            env="ANTHROPIC_API_KEY", placeholder=cb.BROKER_PLACEHOLDER, git=False, ca_file=None))
        self.assertEqual(cb.broker_secrets([ep], {"ANTHROPIC_API_KEY": SECRET, "X": "y"}),
                         {"ANTHROPIC_API_KEY": SECRET})

    def test_the_oauth_token_alone(self):
        (ep,) = cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": "", "CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
        self.assertEqual((ep.env, ep.header, ep.format, ep.beta, ep.strip),
                         ("CLAUDE_CODE_OAUTH_TOKEN", "Authorization", "Bearer {}", "oauth-2025-04-20",
                          ("authorization", "x-api-key")))

    def test_unset_variables_make_no_endpoint(self):
        self.assertEqual(cb.brokered_endpoints([credential()], {}), [])
        self.assertEqual(cb.brokered_endpoints([credential()], {"GITHUB_TOKEN": ""}), [])

    def test_user_credentials_follow_and_one_with_a_builtin_env_replaces_it(self):
        gateway = credential(env="ANTHROPIC_API_KEY", host="llm.corp.example", header="x-api-key", format="{}",
                             base_url_env="ANTHROPIC_BASE_URL", upstream=("llm.corp.example", 8443))
        environ = {"ANTHROPIC_API_KEY": SECRET, "CLAUDE_CODE_OAUTH_TOKEN": OAUTH, "GITHUB_TOKEN": "gh"}
        eps = cb.brokered_endpoints([credential(git=True, upstream=("api.github.test", 443)), gateway], environ)
        self.assertEqual([(e.index, e.env, e.host, e.upstream) for e in eps],
                         [(0, "ANTHROPIC_API_KEY", "llm.corp.example", ("https", "llm.corp.example", 8443)),
                          (1, "GITHUB_TOKEN", "api.github.test", ("https", "api.github.test", 443))])
        self.assertEqual(eps[1].strip, ("authorization",))
        # Without the gateway's key, the subscription token goes to Anthropic, never to the gateway.
        (ep, _) = cb.brokered_endpoints([credential(upstream=("api.github.test", 443)), gateway],
                                        {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH, "GITHUB_TOKEN": "gh"})
        self.assertEqual((ep.env, ep.upstream), ("CLAUDE_CODE_OAUTH_TOKEN", ("https", "api.anthropic.com", 443)))

    def test_a_secret_that_cannot_be_a_header_value_is_refused_without_showing_it(self):
        for value in ("abc\r\nX-Evil: 1", "abc\n", "abc\x00", "ab\u00e9c"):
            with self.subTest(value=value):
                with self.assertRaises(cb.ConfigError) as e:
                    cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": value})
                self.assertIn("ANTHROPIC_API_KEY", str(e.exception))
                self.assertNotIn("abc", str(e.exception))

    def test_inject_headers(self):
        (ep,) = cb.brokered_endpoints([], {"CLAUDE_CODE_OAUTH_TOKEN": OAUTH})
        sent = [("X-Api-Key", "p"), ("authorization", "Bearer p"), ("anthropic-beta", "a"), ("anthropic-beta", "b"),
                ("Accept", "*/*")]
        self.assertEqual(cb.inject_headers(sent, ep, "T"),
                         [("anthropic-beta", "a"), ("anthropic-beta", "b,oauth-2025-04-20"), ("Accept", "*/*"),
                          ("Authorization", "Bearer T")])
        self.assertEqual(cb.inject_headers([("anthropic-beta", " oauth-2025-04-20 ")], ep, "T"),
                         [("anthropic-beta", " oauth-2025-04-20 "), ("Authorization", "Bearer T")])
        (ep,) = cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": SECRET})
        self.assertEqual(cb.inject_headers(sent, ep, "K"),
                         [("anthropic-beta", "a"), ("anthropic-beta", "b"), ("Accept", "*/*"), ("x-api-key", "K")])

    def test_upstream_headers(self):
        (ep,) = cb.brokered_endpoints([credential(upstream=("10.1.2.3", 8443))], {"GITHUB_TOKEN": "T"})
        sent = [("Host", "127.0.0.1:4000"), ("Connection", "close, X-A"), ("X-A", "1"), ("Content-Length", "9"),
                ("Proxy-Connection", "x"), ("Accept", "a")]
        self.assertEqual(cb.upstream_headers(sent, ep, "T", 3),
                         [("Host", "10.1.2.3:8443"), ("Accept", "a"), ("Authorization", "Bearer T"),
                          ("Content-Length", "3")])
        (ep,) = cb.brokered_endpoints([], {"ANTHROPIC_API_KEY": "K"})
        self.assertEqual(cb.upstream_headers([], ep, "K", None), [("Host", "api.anthropic.com"), ("x-api-key", "K")])

    def test_agent_env_for(self):
        eps = cb.brokered_endpoints([credential(git=True), credential(env="GL", host="gitlab.test", git=True,
                                                                      base_url_env="GL_URL")],
                                    {"ANTHROPIC_API_KEY": SECRET, "GITHUB_TOKEN": "g", "GL": "l"})
        self.assertEqual(cb.agent_env_for(eps, [41000, 41001, 41002]), [
            ("ANTHROPIC_API_KEY", "brokered-by-claude-bottle"), ("ANTHROPIC_BASE_URL", "http://127.0.0.1:41000"),
            ("GITHUB_TOKEN", "brokered-by-claude-bottle"), ("GITHUB_API_URL", "http://127.0.0.1:41001"),
            ("GL", "brokered-by-claude-bottle"), ("GL_URL", "http://127.0.0.1:41002"),
            ("GIT_CONFIG_COUNT", "2"),
            ("GIT_CONFIG_KEY_0", "url.http://127.0.0.1:41001/.insteadOf"),
            ("GIT_CONFIG_VALUE_0", "https://api.github.test/"),
            ("GIT_CONFIG_KEY_1", "url.http://127.0.0.1:41002/.insteadOf"),
            ("GIT_CONFIG_VALUE_1", "https://gitlab.test/"),
        ])
        self.assertEqual(cb.agent_env_for(eps[:1], [41000]), [
            ("ANTHROPIC_API_KEY", "brokered-by-claude-bottle"), ("ANTHROPIC_BASE_URL", "http://127.0.0.1:41000")])
        self.assertEqual(cb.credential_env_names([credential()]),
                         {"ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "GITHUB_TOKEN"})

    def test_describe_endpoint_and_socket_name(self):
        eps = cb.brokered_endpoints([credential(git=True, upstream=("10.1.2.3", 8443))],
                                    {"ANTHROPIC_API_KEY": SECRET, "GITHUB_TOKEN": "g"})
        self.assertEqual([cb.describe_endpoint(e) for e in eps], [
            "ANTHROPIC_API_KEY as x-api-key to https://api.anthropic.com (ANTHROPIC_BASE_URL)",
            "GITHUB_TOKEN as Authorization to https://10.1.2.3:8443 (GITHUB_API_URL, git https://api.github.test/)"])
        self.assertEqual([cb.broker_socket_name(e) for e in eps], ["broker-0.sock", "broker-1.sock"])

    def test_importing_the_module_loads_no_network_code(self):
        code = "import sys, claude_bottle; print(sorted({'ssl', 'socket', 'http.client', 'select'} & set(sys.modules)))"
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
        self.assertEqual(out.stdout.strip(), "[]")


if __name__ == "__main__":
    unittest.main()
