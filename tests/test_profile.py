"""Profiles: the shipped ones load; each bad file fails with its exact message."""

import pytest

from phasegate.errors import ProfileError
from phasegate.profile import CRITERIA_IDS, load_profile

from conftest import PROFILES, phasegate

GOOD_TARGET = '[target]\nname = "t"\nbase_url = "http://127.0.0.1:9"\n'
GOOD_PROBE = '[[probes]]\nname = "health"\npath = "/h"\n'

# (file body, message after "<file>: ")
INVALID = [
    ("colour = 1\n" + GOOD_TARGET + GOOD_PROBE, "colour: unknown key"),
    (GOOD_TARGET + 'timout = "5s"\n' + GOOD_PROBE, "target.timout: unknown key"),
    (GOOD_TARGET + GOOD_PROBE + 'metod = "GET"\n', "probes[0].metod: unknown key"),
    (GOOD_TARGET + 'interval = 30\ntimeout = "40s"\n' + GOOD_PROBE,
     "target.timeout: must be below target.interval (40s >= 30s)"),
    (GOOD_TARGET + 'interval = "soon"\n' + GOOD_PROBE,
     "target.interval: must be a duration like 30s, 15m or 24h, got 'soon'"),
    (GOOD_TARGET.replace("http://127.0.0.1:9", "ftp://x") + GOOD_PROBE,
     "target.base_url: must be an http(s) URL, got 'ftp://x'"),
    ('[target]\nbase_url = "http://127.0.0.1:9"\n' + GOOD_PROBE, "target.name: is required"),
    (GOOD_TARGET.replace("http://127.0.0.1:9", "http://[::1") + GOOD_PROBE,
     "target.base_url: is not a valid URL (Invalid IPv6 URL): 'http://[::1'"),
    (GOOD_TARGET.replace("http://127.0.0.1:9", "http://h:99999") + GOOD_PROBE,
     "target.base_url: is not a valid URL (Port out of range 0-65535): 'http://h:99999'"),
    (GOOD_TARGET.replace("http://127.0.0.1:9", "http://h/#x") + GOOD_PROBE,
     "target.base_url: must not have a #fragment (probe paths go after the path, queries are merged), got 'http://h/#x'"),
    (GOOD_TARGET + "auth_optional = 1\n" + GOOD_PROBE, "target.auth_optional: must be true or false, got int 1"),
    (GOOD_TARGET, "probes: is required"),
    (GOOD_TARGET + GOOD_PROBE + GOOD_PROBE, "probes: probe name 'health' is used twice"),
    (GOOD_TARGET + '[[probes]]\nname = "h"\npath = "h"\n', "probes[0].path: must start with '/', got 'h'"),
    (GOOD_TARGET + GOOD_PROBE + 'method = "FETCH"\n',
     "probes[0].method: must be one of GET, POST, PUT, PATCH, DELETE, HEAD, got 'FETCH'"),
    (GOOD_TARGET + GOOD_PROBE + "expect_status = [200, 700]\n",
     "probes[0].expect_status: must be a list of HTTP status codes (100-599)"),
    (GOOD_TARGET + GOOD_PROBE + '[[probes.assert]]\npath = "a"\n',
     "probes[0].assert[0]: needs exactly one of equals, length, contains, excludes"),
    (GOOD_TARGET + GOOD_PROBE + '[[probes.assert]]\npath = "a"\nlength = "12"\n',
     "probes[0].assert[0].length: must be an integer, got '12'"),
    (GOOD_TARGET + GOOD_PROBE + '[probes.extract]\nhandlers = "x"\n', "probes[0].extract.handlers: unknown key"),
    (GOOD_TARGET + 'auth_header = "Authorization"\n' + GOOD_PROBE,
     "target.auth_env: auth_header and auth_env go together (the env var holds the value)"),
    (GOOD_TARGET + GOOD_PROBE + "[criteria]\nmin_coverage = 2\n",
     "criteria.min_coverage: must be between 0 and 1, got 2"),
    (GOOD_TARGET + GOOD_PROBE + "[criteria.no_5xx]\nkind = \"optional\"\n",
     "criteria.no_5xx.kind: must be hard or soft, got 'optional'"),
    (GOOD_TARGET + GOOD_PROBE + "[criteria.no_5xxx]\nkind = \"hard\"\n",
     "criteria.no_5xxx: unknown criterion: a new one needs metric = ... (or promql = ...); built in are "
     "window_complete, no_5xx, no_feature_disabled, no_rollback, service_healthy, execute_p99, error_rate, "
     "no_anomalies, no_regression, tenant_error_rate, cert_expiry, flags_at_startup, render_errors"),
    # Criteria written as data: each rule, with its exact message.
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\nmetric = "p42_ms"\nmax = 1\n',
     "criteria.c1.metric: unknown metric 'p42_ms'; one of samples, errors, error_rate, availability, http_5xx, "
     "status_count, feature_disabled, timeouts, assertion_failures, p50_ms, p95_ms, p99_ms, max_ms"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\nmetric = "errors"\nmax = 1\nwhere = { region = "eu" }\n',
     "criteria.c1.where.region: unknown filter; one of probe, tenant, source, route, status, outcome"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\nmetric = "errors"\nmax = 1\nmin = 0\n',
     "criteria.c1: needs exactly one of max or min (not both)"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\nmetric = "errors"\n', "criteria.c1: needs exactly one of max or min"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\nmetric = "p95_ms"\nmax = 800\nmin_samples = 20\n',
     "criteria.c1.min_samples: must be at least 59 for a 95% bound on p95_ms (got 20): fewer samples cannot give one"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\nmetric = "errors"\nmax = 0\nrunbook = "nope"\n',
     "criteria.c1.runbook: names no [runbook.nope] section"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\nmetric = "errors"\nmax = 0\nwhere = { probe = "lsit" }\n',
     "criteria.c1.where.probe: names no probe 'lsit'; known: health"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\nmetric = "errors"\nmax = 0\nper = "region"\n',
     "criteria.c1.per: must be one of tenant, probe, route, got 'region'"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\nmetric = "errors"\nmax = 0\nwhere = { source = "logs" }\n',
     "criteria.c1.where.source: names no source 'logs'; known: probes, traffic, prometheus, render"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\npromql = "up"\nmax = 1\naggregate = "avg"\n',
     "criteria.c1.aggregate: must be max, last or sum, got 'avg'"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.c1]\npromql = "up"\nmax = 1\n',
     "criteria.c1.promql: needs a [prometheus] section (its url) to query"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.no_5xx]\nmetric = "errors"\n',
     "criteria.no_5xx.metric: is 'http_5xx' for this built-in criterion, got 'errors'"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.no_5xx]\nrunbook = "scenario_9"\n',
     "criteria.no_5xx.runbook: names no [runbook.scenario_9] section"),
    (GOOD_TARGET + GOOD_PROBE + '[criteria.execute_p99]\nprobe = "exec"\n',
     "criteria.execute_p99.probe: names no probe called 'exec'"),
    (GOOD_TARGET + GOOD_PROBE + "[criteria.error_rate]\nthreshold = true\n",
     "criteria.error_rate.threshold: must be an integer or a number, got True"),
    (GOOD_TARGET + GOOD_PROBE + "[criteria.error_rate]\nthreshold = -1\n",
     "criteria.error_rate.threshold: must not be negative, got -1"),
    # Object storage, the engine, and the runbook's machine steps (issues 17 and 20).
    (GOOD_TARGET + GOOD_PROBE + '[storage]\nsecret_key_env = "my secret"\n',
     "storage.secret_key_env: must name an environment variable (the credential itself never goes in a profile)"),
    (GOOD_TARGET + GOOD_PROBE + '[storage]\nendpoint = "s3.local:9000"\n',
     "storage.endpoint: must be an http(s) URL, got 's3.local:9000'"),
    (GOOD_TARGET + GOOD_PROBE + '[storage]\nbucket = "b"\n', "storage.bucket: unknown key"),
    (GOOD_TARGET + GOOD_PROBE + '[engine]\nurl = "yarn"\n',
     "engine.url: must be duckdb or spark://HOST:PORT (a Spark standalone master), got 'yarn'"),
    (GOOD_TARGET + GOOD_PROBE + '[runbook.s1]\ntitle = "t"\nset_env = { "FLAG-ON" = "false" }\n',
     "runbook.s1.set_env: 'FLAG-ON' is not an environment variable name"),
    (GOOD_TARGET + GOOD_PROBE + '[runbook.s1]\ntitle = "t"\nset_env = { FLAG = false }\n',
     "runbook.s1.set_env.FLAG: must be a string (as the platform stores it), got bool"),
    (GOOD_TARGET + GOOD_PROBE + '[runbook.s1]\ntitle = "t"\nverify = { probe = "nope", expect_status = [503] }\n',
     "runbook.s1.verify.probe: unknown probe 'nope'; known: health"),
    (GOOD_TARGET + GOOD_PROBE + '[runbook.s1]\ntitle = "t"\nverify = { probe = "health", expect_status = [] }\n',
     "runbook.s1.verify.expect_status: must be a list of HTTP statuses, got []"),
    (GOOD_TARGET + GOOD_PROBE + '[runbook.s1]\ntitle = "t"\ndeploy = "yes"\n',
     "runbook.s1.deploy: must be true or false, got str 'yes'"),
]


@pytest.mark.parametrize("body,message", INVALID, ids=[m.split(":")[0] for _, m in INVALID])
def test_invalid_profile_exact_message(tmp_path, body, message):
    path = tmp_path / "bad.toml"
    path.write_text(body)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(err.value) == f"{path}: {message}"


def test_not_toml_and_missing(tmp_path):
    path = tmp_path / "x.toml"
    path.write_text("[target\n")
    with pytest.raises(ProfileError, match=r"x.toml: not valid TOML"):
        load_profile(path)
    with pytest.raises(ProfileError, match=r"^profile not found: .*nope.toml$"):
        load_profile(tmp_path / "nope.toml")


def test_shipped_profiles_reproduce_the_seed():
    staging = load_profile(PROFILES / "fault-lens-staging.toml")
    sim = load_profile(PROFILES / "simulator.toml")
    for p in (staging, sim):
        assert [pr.name for pr in p.probes] == ["health", "list", "suggestions", "execute"]
        assert [c.id for c in p.criteria.items] == [*CRITERIA_IDS, "acceptance"]  # a criterion written as data
        # The seed's five, and its "[FeatureFlags] at startup" check (criterion 3 as Render's logs show it).
        assert [c.id for c in p.criteria.items if c.kind == "hard" and c.enabled] == [
            "window_complete", "no_5xx", "no_feature_disabled", "no_rollback", "service_healthy",
            "flags_at_startup"] \
            + (["acceptance"] if p is staging else [])
        assert [c.name for c in p.checks] == (["acceptance_fail_closed", "acceptance_signed_flow"] if p is staging else [])
        assert p.criteria.duration_s == 86400
        assert p.criteria.get("execute_p99").threshold == 10000
        assert p.criteria.get("error_rate").threshold == 0.01
        assert p.criteria.get("no_5xx").runbook == "scenario_1"
        assert p.runbook["scenario_1"].title == "Scenario 1: 5xx Errors Detected"
        assert {a.length for a in p.probe("list").asserts} >= {12}
        assert {a.length for a in p.probe("suggestions").asserts} >= {11}
        assert p.probe("execute").method == "POST"
        assert p.target.auth_env == "FAULT_LENS_API_TOKEN"
    assert sim.target.base_url == "http://127.0.0.1:8765"
    assert staging.target.base_url.startswith("https://")


def test_base_url_override_and_cli_message(tmp_path):
    p = load_profile(PROFILES / "simulator.toml", base_url="http://127.0.0.1:1234")
    assert p.target.base_url == "http://127.0.0.1:1234"
    bad = tmp_path / "bad.toml"
    bad.write_text("colour = 1\n" + GOOD_TARGET + GOOD_PROBE)
    out = phasegate("check", "--profile", bad)
    assert out.returncode == 2
    assert out.stderr.strip() == f"phasegate: error: {bad}: colour: unknown key"
    assert "Traceback" not in out.stderr
