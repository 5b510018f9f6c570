"""Editing claude-bottle.toml and proposing allowlists: pure functions, no files, no docker.

Every edit is compared byte for byte with the text expected; every refusal is one line naming the file and the
bottle and ending with the line to write by hand.
"""

import tomllib
import unittest
from unittest import mock

from tests import guard
from tests.guard import cb

setUpModule, tearDownModule = guard.setUpModule, guard.tearDownModule

HOSTS = ["registry.npmjs.org", "pypi.org"]
NEW = 'allow = ["registry.npmjs.org", "pypi.org"]'


def edit(text, bottle="web", hosts=HOSTS):
    return cb.edit_bottle_allow(text, bottle, hosts, "proj/claude-bottle.toml")


class EditOneLineArrayTests(unittest.TestCase):
    def test_one_line_array_keeps_comments_spacing_and_other_tables(self):
        before = (
            "# claude-bottle config for the shop\n"
            "\n"
            "[bottles.default]\n"
            'allow = ["example.com"]\n'
            "\n"
            "[bottles.web]   # the bottle the implementer uses\n"
            "# hosts beyond the defaults\n"
            'allow  =  ["github.com", "*.githubusercontent.com"]   # egress\n'
            'trusted = ["git.corp.example"]\n'
            "\n"
            "[agents.implementer]\n"
            'bottle = "web"\n'
        )
        after = before.replace('allow  =  ["github.com", "*.githubusercontent.com"]',
                               'allow  =  ["registry.npmjs.org", "pypi.org"]')
        self.assertEqual(edit(before), after)

    def test_only_the_named_bottle_changes(self):
        head, tail = '[bottles.a]\nallow = ["a.example"]\n\n', '\n\n[bottles.z]\nallow = ["z.example"]\n'
        before = head + "[bottles.web]\nallow = []" + tail
        after = head + "[bottles.web]\n" + NEW + tail
        self.assertEqual(edit(before), after)

    def test_no_hosts_writes_an_empty_array(self):
        self.assertEqual(edit('[bottles.web]\nallow = [\n  "a.example",\n]\n', hosts=[]),
                         "[bottles.web]\nallow = []\n")

    def test_no_final_newline_stays_without_one(self):
        self.assertEqual(edit('[bottles.web]\nallow = ["a.example"]'), "[bottles.web]\n" + NEW)

    def test_crlf_file(self):
        before = '# cfg\r\n[bottles.web]\r\nallow = ["a.example"] # x\r\ntrusted = []\r\n'
        self.assertEqual(edit(before), '# cfg\r\n[bottles.web]\r\n' + NEW + ' # x\r\ntrusted = []\r\n')

    def test_value_scanner_follows_dates_inline_tables_and_escaped_quotes(self):
        before = (
            "[bottles.web]\n"
            'note = "a \\" [bottles.web] # not a comment"\n'
            "reviewed = 1979-05-27 07:32:00Z  # a date-time with a space\n"
            "limits = { a = \"]\", b = [1, 2], c = { d = 'x' } }\n"
            "ratio = 0.5\n"
            'allow = ["a.example"]\n'
        )
        self.assertEqual(edit(before), before.replace('allow = ["a.example"]', NEW))


class EditMultiLineArrayTests(unittest.TestCase):
    def test_multi_line_with_trailing_comma(self):
        before = (
            "[bottles.web]\n"
            "allow = [\n"
            '    "github.com",\n'
            '    "*.githubusercontent.com",\n'
            "]  # grown by learn mode\n"
            "egress_network = \"corp\"\n"
        )
        after = (
            "[bottles.web]\n"
            "allow = [\n"
            '    "registry.npmjs.org",\n'
            '    "pypi.org",\n'
            "]  # grown by learn mode\n"
            "egress_network = \"corp\"\n"
        )
        self.assertEqual(edit(before), after)

    def test_multi_line_without_trailing_comma_and_several_items_per_line(self):
        before = '[bottles.web]\nallow = [\n  "a.example", "b.example",\n  "c.example"\n]\n'
        after = '[bottles.web]\nallow = [\n  "registry.npmjs.org",\n  "pypi.org"\n]\n'
        self.assertEqual(edit(before), after)

    def test_multi_line_in_an_indented_table_with_tabs(self):
        before = '[bottles.web]\n\tallow = [\n\t\t"a.example",\n\t]\n\ttrusted = []\n'
        after = '[bottles.web]\n\tallow = [\n\t\t"registry.npmjs.org",\n\t\t"pypi.org",\n\t]\n\ttrusted = []\n'
        self.assertEqual(edit(before), after)

    def test_closing_bracket_after_the_last_item(self):
        before = '[bottles.web]\nallow = [\n    "a.example",\n    "b.example"]\n'
        after = '[bottles.web]\nallow = [\n    "registry.npmjs.org",\n    "pypi.org"]\n'
        self.assertEqual(edit(before), after)

    def test_hanging_layout_aligns_items_after_the_bracket(self):
        before = '[bottles.web]\nallow = ["a.example",\n         "b.example"]  # aligned\n'
        after = '[bottles.web]\nallow = ["registry.npmjs.org",\n         "pypi.org"]  # aligned\n'
        self.assertEqual(edit(before), after)

    def test_empty_multi_line_array_gets_one_item_per_line(self):
        before = "[bottles.web]\nallow = [\n]\n"
        after = '[bottles.web]\nallow = [\n    "registry.npmjs.org",\n    "pypi.org",\n]\n'
        self.assertEqual(edit(before), after)

    def test_crlf_multi_line(self):
        before = '[bottles.web]\r\nallow = [\r\n  "a.example",\r\n]\r\n\r\n[agents.x]\r\nbottle = "web"\r\n'
        after = ('[bottles.web]\r\nallow = [\r\n  "registry.npmjs.org",\r\n  "pypi.org",\r\n]\r\n\r\n'
                 '[agents.x]\r\nbottle = "web"\r\n')
        self.assertEqual(edit(before), after)
        self.assertNotIn("\n", after.replace("\r\n", ""))


class EditWhereAllowIsMissingTests(unittest.TestCase):
    def test_allow_inserted_right_after_the_header(self):
        before = (
            "[bottles.web]  # web\n"
            "# the corporate egress network\n"
            'egress_network = "corp"\n'
        )
        after = (
            "[bottles.web]  # web\n"
            + NEW + "\n"
            "# the corporate egress network\n"
            'egress_network = "corp"\n'
        )
        self.assertEqual(edit(before), after)

    def test_allow_indented_like_the_first_key(self):
        before = '[bottles.web]\n  trusted = []\n  egress_network = "corp"\n'
        self.assertEqual(edit(before), '[bottles.web]\n  ' + NEW + '\n  trusted = []\n  egress_network = "corp"\n')

    def test_empty_table_at_the_end_without_final_newline(self):
        self.assertEqual(edit("# x\n[bottles.web]"), "# x\n[bottles.web]\n" + NEW)

    def test_crlf_insert(self):
        self.assertEqual(edit("[bottles.web]\r\ntrusted = []\r\n"), "[bottles.web]\r\n" + NEW + "\r\ntrusted = []\r\n")

    def test_sub_tables_after_the_table(self):
        before = (
            "[bottles.web]\n"
            'egress_network = "corp"\n'
            "\n"
            "[bottles.web.ssh]\n"
            "allow = 1\n"
            "\n"
            "[[bottles.web.ssh2]]\n"
            'Host = "github"\n'
            'allow = ["not.this.one"]\n'
        )
        after = before.replace('[bottles.web]\n', '[bottles.web]\n' + NEW + '\n', 1)
        self.assertEqual(edit(before), after)

    def test_array_of_ssh_tables_after_the_table_with_allow(self):
        before = (
            "[bottles.web]\n"
            'allow = ["github.com"]\n'
            "\n"
            "[[bottles.web.ssh]]\n"
            'Host = "github"\n'
            'Hostname = "github.com"\n'
            "\n"
            "[[bottles.web.ssh]]\n"
            'Host = "corp"\n'
            'Hostname = "git.corp.example"\n'
        )
        self.assertEqual(edit(before), before.replace('allow = ["github.com"]', NEW))


class EditWhereTheTableIsMissingTests(unittest.TestCase):
    def test_appended_after_a_blank_line(self):
        before = '# config\n[agents.x]\nbottle = "default"\n'
        self.assertEqual(edit(before), before + "\n[bottles.web]\n" + NEW + "\n")

    def test_file_ending_in_a_blank_line_gets_no_second_one(self):
        before = '[agents.x]\nbottle = "default"\n\n'
        self.assertEqual(edit(before), before + "[bottles.web]\n" + NEW + "\n")

    def test_file_without_final_newline(self):
        self.assertEqual(edit('[agents.x]\nbottle = "default"'),
                         '[agents.x]\nbottle = "default"\n\n[bottles.web]\n' + NEW + "\n")

    def test_empty_file(self):
        self.assertEqual(edit(""), "[bottles.web]\n" + NEW + "\n")

    def test_crlf_file(self):
        self.assertEqual(edit("# config\r\n"), "# config\r\n\r\n[bottles.web]\r\n" + NEW + "\r\n")

    def test_bottle_known_only_from_its_ssh_sub_table(self):
        before = '[[bottles.web.ssh]]\nHost = "g"\nHostname = "github.com"\n'
        self.assertEqual(edit(before), before + "\n[bottles.web]\n" + NEW + "\n")

    def test_other_bottles_are_not_this_one(self):
        before = '[bottles.webapp]\nallow = ["a.example"]\n\n[bottles]\nweb2 = {}\n'
        self.assertEqual(edit(before), before + "\n[bottles.web]\n" + NEW + "\n")


class EditQuotingAndStringsTests(unittest.TestCase):
    def test_multi_line_strings_that_look_like_the_table_are_not_touched(self):
        before = (
            "[agents.implementer]\n"
            "command = [\"bash\", \"-c\", \"\"\"\n"
            "cat > claude-bottle.toml <<'EOF'\n"
            "[bottles.web]\n"
            "allow = [\"evil.example\",\n"
            "# not a comment\n"
            "EOF\n"
            "\"\"\"]\n"
            "workspace = '''\n"
            "[bottles.web]\n"
            "allow = ['''\n"
            "\n"
            "[bottles.web]\n"
            'allow = ["a.example"]\n'
        )
        after = before[:before.rindex('allow = ["a.example"]')] + NEW + "\n"
        self.assertEqual(edit(before), after)

    def test_quoted_header_and_key(self):
        before = '[ bottles . "web" ]\n"allow" = ["a.example"]\n'
        self.assertEqual(edit(before), '[ bottles . "web" ]\n"allow" = ["registry.npmjs.org", "pypi.org"]\n')

    def test_literal_quoted_header(self):
        before = "[bottles.'web']\n'allow'=['a.example']\n"
        self.assertEqual(edit(before), "[bottles.'web']\n'allow'=[\"registry.npmjs.org\", \"pypi.org\"]\n")

    def test_a_bottle_name_that_needs_quotes(self):
        self.assertEqual(edit("", bottle="my web"), '[bottles."my web"]\n' + NEW + "\n")
        with self.assertRaises(cb.ConfigError) as ctx:
            cb.edit_bottle_allow('[[bottles."a\\nb"]]\n', "a\nb", [], "f")
        self.assertIn('f: cannot edit allow in [bottles."a\\nb"]: bottles or', str(ctx.exception))
        self.assertNotIn("\n", str(ctx.exception))

    def test_escaped_key_in_header(self):
        before = '[bottles."w\\u0065b"]\nallow = []\n'
        self.assertEqual(edit(before), '[bottles."w\\u0065b"]\n' + NEW + "\n")

    def test_every_edit_reads_back_as_intended(self):
        before = '[bottles.web]\nallow = ["a.example"]\n'
        data = tomllib.loads(edit(before))
        self.assertEqual(data, {"bottles": {"web": {"allow": HOSTS}}})


class EditRefusalTests(unittest.TestCase):
    def assertRefused(self, text, why):
        with self.assertRaises(cb.ConfigError) as ctx:
            edit(text)
        message = str(ctx.exception)
        self.assertNotIn("\n", message)
        self.assertTrue(message.startswith("proj/claude-bottle.toml: cannot edit allow in [bottles.web]: "), message)
        self.assertTrue(message.endswith('; edit it by hand: allow = ["registry.npmjs.org", "pypi.org"]'), message)
        self.assertIn(why, message)
        self.assertEqual(ctx.exception.status, 2)

    def test_inline_table_under_bottles(self):
        self.assertRefused('[bottles]\nweb = { allow = ["a.example"] }\n',
                           "bottles.web is written as an inline table")

    def test_bottles_as_an_inline_table(self):
        self.assertRefused('bottles = { web = { allow = [] } }\n', "bottles is written as an inline table")

    def test_dotted_keys_at_the_root(self):
        self.assertRefused('bottles.web.allow = ["a.example"]\n', "dotted keys (bottles.web.allow)")

    def test_dotted_keys_under_bottles(self):
        self.assertRefused('[bottles]\nweb.trusted = []\n', "dotted keys (bottles.web.trusted)")

    def test_dotted_allow(self):
        self.assertRefused('[bottles.web]\nallow.x = 1\n', "allow is written with dotted keys")

    def test_allow_as_a_table(self):
        self.assertRefused('[bottles.web]\n[bottles.web.allow]\nx = 1\n', "allow is written as a table")

    def test_allow_not_an_array(self):
        self.assertRefused('[bottles.web]\nallow = "a.example"\n', "allow is not an array")

    def test_comment_inside_the_array(self):
        self.assertRefused('[bottles.web]\nallow = [\n  "a.example",  # for the docs\n]\n',
                           "the allow array has comments inside it")

    def test_comment_line_inside_the_array(self):
        self.assertRefused('[bottles.web]\nallow = [\n  # none yet\n]\n', "comments inside it")

    def test_duplicate_allow(self):
        self.assertRefused('[bottles.web]\nallow = ["a.example"]\nallow = ["b.example"]\n', "not valid TOML")

    def test_duplicate_table(self):
        self.assertRefused('[bottles.web]\nallow = []\n[bottles.web]\ntrusted = []\n', "not valid TOML")

    def test_array_of_tables(self):
        self.assertRefused('[[bottles.web]]\nallow = []\n', "not a table")

    def test_invalid_toml(self):
        self.assertRefused('[bottles.web\nallow = []\n', "not valid TOML")

    def test_the_read_back_check_refuses_a_wrong_edit(self):
        with mock.patch.object(cb, "_allow_array", return_value='["registry.npmjs.org"]'):
            self.assertRefused('[bottles.web]\nallow = ["a.example"]\n', "would change more than this allow list")
        with mock.patch.object(cb, "_allow_array", return_value='["a", ]]'):
            self.assertRefused('[bottles.web]\nallow = ["a.example"]\n', "would not be valid TOML")


PRESETS = {
    "npm": ("registry.npmjs.org",),
    "pypi": ("pypi.org", "files.pythonhosted.org"),
    "github": ("github.com", "api.github.com", "codeload.github.com", "*.githubusercontent.com"),
}


class ProposeAllowTests(unittest.TestCase):
    def propose(self, used, presets=PRESETS, defaults=cb.DEFAULT_HOSTS):
        return cb.propose_allow(used, defaults, presets)

    def test_defaults_need_nothing(self):
        self.assertEqual(self.propose(["api.anthropic.com", "claude.ai"]), ([], []))

    def test_presets_cover_and_other_hosts_are_listed(self):
        used = ["pypi.org", "files.pythonhosted.org", "raw.githubusercontent.com", "example.org",
                "api.anthropic.com", "mirror.corp.example", "example.org"]
        self.assertEqual(self.propose(used), (["@github", "@pypi"], ["example.org", "mirror.corp.example"]))

    def test_one_host_of_a_preset_is_enough_to_propose_it(self):
        self.assertEqual(self.propose(["files.pythonhosted.org"]), (["@pypi"], []))

    def test_no_wildcard_for_plain_hosts(self):
        self.assertEqual(self.propose(["a.corp.example", "b.corp.example"]), ([], ["a.corp.example", "b.corp.example"]))

    def test_a_preset_that_adds_nothing_is_not_proposed(self):
        presets = {**PRESETS, "gh-api": ("api.github.com",), "gh-all": ("github.com", "api.github.com")}
        # gh-all and github both cover both hosts; gh-all has fewer entries.
        self.assertEqual(self.propose(["github.com", "api.github.com"], presets), (["@gh-all"], []))
        # One host: the smallest preset covering it.
        self.assertEqual(self.propose(["api.github.com"], presets), (["@gh-api"], []))
        # The one covering the most is taken first; the rest then add nothing.
        self.assertEqual(self.propose(["github.com", "api.github.com", "codeload.github.com"], presets),
                         (["@github"], []))

    def test_ties_go_to_the_first_name(self):
        presets = {"b": ("x.example",), "a": ("x.example",)}
        self.assertEqual(self.propose(["x.example"], presets), (["@a"], []))

    def test_wildcard_defaults_cover_subdomains(self):
        self.assertEqual(self.propose(["corp.example", "git.corp.example", "other.example"],
                                      defaults=("*.corp.example",)), ([], ["other.example"]))

    def test_unusable_hosts_are_skipped(self):
        self.assertEqual(self.propose(["::1", "", "bad host", "Example.ORG"]), ([], ["example.org"]))

    def test_no_presets(self):
        self.assertEqual(self.propose(["pypi.org"], {}), ([], ["pypi.org"]))


class ExpandAllowTests(unittest.TestCase):
    def test_presets_expand_in_place_without_duplicates(self):
        self.assertEqual(cb.expand_allow(["example.org", "@npm", "@pypi", "pypi.org", "@npm"], PRESETS, "allow"),
                         ("example.org", "registry.npmjs.org", "pypi.org", "files.pythonhosted.org"))

    def test_plain_hosts_pass_through(self):
        self.assertEqual(cb.expand_allow(("a.example", "*.b.example"), PRESETS, "allow"), ("a.example", "*.b.example"))
        self.assertEqual(cb.expand_allow([], PRESETS, "allow"), ())

    def test_unknown_preset(self):
        with self.assertRaises(cb.ConfigError) as ctx:
            cb.expand_allow(["@npm", "@rubygems"], PRESETS, "cfg.toml: [bottles.web] allow")
        self.assertEqual(str(ctx.exception), "cfg.toml: [bottles.web] allow: unknown preset '@rubygems'; "
                                             "known presets: @github, @npm, @pypi")

    def test_malformed_preset_names(self):
        for entry in ("@", "@NPM", "@npm x", "@npm.org", "@np_m", "@npm\n"):
            with self.subTest(entry=entry), self.assertRaises(cb.ConfigError) as ctx:
                cb.expand_allow([entry], PRESETS, "--allow")
            self.assertIn("unknown preset", str(ctx.exception))
            self.assertNotIn("\n", str(ctx.exception))

    def test_no_presets_known(self):
        with self.assertRaisesRegex(cb.ConfigError, "known presets: none$"):
            cb.expand_allow(["@npm"], {}, "allow")

    def test_non_string_entry(self):
        with self.assertRaisesRegex(cb.ConfigError, "^allow: expected a hostname or @preset string, got int$"):
            cb.expand_allow([1], PRESETS, "allow")


# Verbatim from pipelock 2.3.0's stdout (shared/reference/pipelock-events.md), split only to fit our line length.
STARTUP = [
    '{"level":"warn","component":"pipelock","event":"anomaly","method":"STARTUP","resource":"0.0.0.0:8888",'
    '"reason":"listen address is not loopback — /metrics and /stats endpoints are exposed to the network",'
    '"score":0.5,"time":"2026-12-01T18:55:49Z","message":"anomaly detected"}',
    '{"level":"info","component":"pipelock","event":"startup","listen":"0.0.0.0:8888","mode":"strict",'
    '"version":"2.3.0","config_hash":"3762fe3c8620d6f1c923310db56e91534368b750d1b0ef196af782ddc740a826",'
    '"time":"2026-12-01T18:55:49Z","message":"pipelock started"}',
]
RELOADED = (
    '{"level":"info","component":"pipelock","event":"config_reload","status":"success","detail":"mode=strict",'
    '"config_hash":"941429f4de349145f4e21433c6541b32404ca2fca70faaf4e6b038aabf4196cb",'
    '"time":"2026-12-01T18:55:54Z","message":"configuration reloaded"}'
)
RELOADED_HASH = "941429f4de349145f4e21433c6541b32404ca2fca70faaf4e6b038aabf4196cb"
REJECTED = (
    '{"level":"error","component":"pipelock","event":"error","method":"CONFIG_RELOAD",'
    '"resource":"/config/pipelock.yaml","error":"rejected: security downgrade from strict mode",'
    '"time":"2026-12-01T18:55:56Z","message":"request error"}'
)
TUNNEL = (
    '{"level":"info","component":"pipelock","event":"tunnel_open","target":"web:8000","client_ip":"172.23.0.4",'
    '"request_id":"req-4","agent":"anonymous","time":"2026-12-01T18:55:52Z","message":"tunnel opened"}'
)
CONNECT_ERROR = (
    '{"level":"error","component":"pipelock","event":"error","method":"CONNECT","target":"web:9",'
    '"client_ip":"172.23.0.4","request_id":"req-6","agent":"anonymous",'
    '"error":"dial tcp 172.23.0.2:9: connect: connection refused","time":"2026-12-01T18:55:52Z",'
    '"message":"request error"}'
)
NOISE = ["WARNING: config reload: trusted_domains - trusted domains added: notrusted", "", "{not json", "[1, 2]"]


class ReloadEventTests(unittest.TestCase):
    def test_success_for_our_hash(self):
        event = cb.reload_event_for([*NOISE, TUNNEL, CONNECT_ERROR, RELOADED + "\n"], RELOADED_HASH)
        self.assertEqual((event["event"], event["status"], event["config_hash"]),
                         ("config_reload", "success", RELOADED_HASH))

    def test_success_for_another_hash_is_not_ours(self):
        self.assertIsNone(cb.reload_event_for([*STARTUP, RELOADED], "0" * 64))

    def test_startup_hash_is_not_a_reload(self):
        startup_hash = "3762fe3c8620d6f1c923310db56e91534368b750d1b0ef196af782ddc740a826"
        self.assertIsNone(cb.reload_event_for(STARTUP, startup_hash))

    def test_refusal(self):
        event = cb.reload_event_for([*NOISE, CONNECT_ERROR, REJECTED, REJECTED], RELOADED_HASH)
        self.assertEqual(event["error"], "rejected: security downgrade from strict mode")

    def test_first_settling_line_wins(self):
        self.assertEqual(cb.reload_event_for([REJECTED, RELOADED], RELOADED_HASH)["event"], "error")
        self.assertEqual(cb.reload_event_for([RELOADED, REJECTED], RELOADED_HASH)["event"], "config_reload")

    def test_nothing_yet(self):
        self.assertIsNone(cb.reload_event_for([*STARTUP, *NOISE, TUNNEL, CONNECT_ERROR], RELOADED_HASH))
        self.assertIsNone(cb.reload_event_for([], RELOADED_HASH))

    def test_reads_lines_lazily(self):
        def lines():
            yield TUNNEL
            yield RELOADED
            raise AssertionError("read past the settling line")
        self.assertEqual(cb.reload_event_for(lines(), RELOADED_HASH)["status"], "success")


class ReloadWaitTests(unittest.TestCase):
    def test_applied_when_fed_one_character_at_a_time(self):
        wait = cb.ReloadWait(RELOADED_HASH)
        stream = "\n".join([*STARTUP, TUNNEL, RELOADED]) + "\n"
        states = [wait.feed(c) for c in stream]
        # Settled by the line's closing brace, the newline not needed; not a character before.
        self.assertEqual(set(states[:-2]), {"waiting"})
        self.assertEqual((states[-2], states[-1], wait.reason), ("applied", "applied", ""))
        self.assertEqual(wait.event["config_hash"], RELOADED_HASH)

    def test_refused_in_uneven_chunks(self):
        wait = cb.ReloadWait(RELOADED_HASH)
        stream = "\n".join([TUNNEL, *NOISE, REJECTED, RELOADED]) + "\n"
        for i in range(0, len(stream), 37):
            wait.feed(stream[i:i + 37])
        self.assertEqual(wait.state, "refused")
        self.assertEqual(wait.reason, "rejected: security downgrade from strict mode")

    def test_a_last_line_without_newline_settles(self):
        wait = cb.ReloadWait(RELOADED_HASH)
        self.assertEqual(wait.feed(TUNNEL + "\n" + RELOADED), "applied")

    def test_settled_for_good(self):
        wait = cb.ReloadWait(RELOADED_HASH)
        self.assertEqual(wait.feed(REJECTED + "\n"), "refused")
        self.assertEqual(wait.feed(RELOADED + "\n"), "refused")

    def test_waiting(self):
        wait = cb.ReloadWait(RELOADED_HASH)
        self.assertEqual(wait.feed("\n".join(STARTUP) + "\n" + RELOADED[:50]), "waiting")
        self.assertIsNone(wait.event)


if __name__ == "__main__":
    unittest.main()
