"""Configuration: file < env < flags, unknown keys are errors, bounds, masked secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edge_agent.config import ConfigError, Settings, describe_fields, load_settings, masked_dump

from .conftest import run_cli


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for k in list(os.environ):
        if k.startswith("EDGE_AGENT_"):
            monkeypatch.delenv(k)


def test_defaults_are_valid() -> None:
    s = load_settings()
    assert s.mqtt.topic_prefix == "edge"
    assert s.mqtt.port == 1883
    assert s.runtime.accelerator == "auto"
    assert s.source.uri == "demo"


def test_precedence_file_env_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.toml"
    f.write_text('device_id = "from-file"\n[mqtt]\nport = 1111\nqos = 0\n[source]\nfps = 5\n')
    monkeypatch.setenv("EDGE_AGENT_MQTT__PORT", "2222")
    monkeypatch.setenv("EDGE_AGENT_DEVICE_ID", "from-env")
    s = load_settings(f, {"device_id": "from-flag"})
    assert (s.device_id, s.mqtt.port, s.mqtt.qos, s.source.fps) == ("from-flag", 2222, 0, 5.0)


def test_every_required_env_name_is_accepted(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    labels = tmp_path / "l.txt"
    labels.write_text("a\n")
    env = {
        "EDGE_AGENT_DEVICE_ID": "cam-7", "EDGE_AGENT_MQTT__HOST": "broker.lan", "EDGE_AGENT_MQTT__PORT": "8883",
        "EDGE_AGENT_MQTT__TOPIC_PREFIX": "site/a", "EDGE_AGENT_MQTT__USERNAME": "u",
        "EDGE_AGENT_MQTT__PASSWORD": "hunter2", "EDGE_AGENT_MQTT__TLS__CA_FILE": str(ca),
        "EDGE_AGENT_MQTT__TLS__CERT_FILE": str(ca), "EDGE_AGENT_MQTT__TLS__KEY_FILE": str(ca),
        "EDGE_AGENT_MQTT__QOS": "2", "EDGE_AGENT_SOURCE__URI": "0", "EDGE_AGENT_SOURCE__FPS": "7.5",
        "EDGE_AGENT_MODEL__PATH": str(model), "EDGE_AGENT_MODEL__LABELS": str(labels),
        "EDGE_AGENT_MODEL__TASK": "detection", "EDGE_AGENT_MODEL__SCORE_THRESHOLD": "0.3",
        "EDGE_AGENT_RUNTIME__ACCELERATOR": "/usr/lib/libvx_delegate.so", "EDGE_AGENT_RUNTIME__THREADS": "3",
        "EDGE_AGENT_HEALTH__INTERVAL_S": "2.5",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = load_settings()
    assert s.device_id == "cam-7" and s.mqtt.host == "broker.lan" and s.mqtt.port == 8883
    assert s.mqtt.topic_prefix == "site/a" and s.mqtt.username == "u" and s.mqtt.qos == 2
    assert s.mqtt.password is not None and s.mqtt.password.get_secret_value() == "hunter2"
    assert s.mqtt.tls.ca_file == ca and s.mqtt.tls.cert_file == ca and s.mqtt.tls.key_file == ca
    assert s.source.uri == "0" and s.source.fps == 7.5
    assert s.model.path == model and s.model.labels == labels and s.model.task == "detection"
    assert s.model.score_threshold == 0.3
    assert s.runtime.accelerator == "/usr/lib/libvx_delegate.so" and s.runtime.threads == 3
    assert s.health.interval_s == 2.5
    assert "hunter2" not in json.dumps(masked_dump(s))
    assert "hunter2" not in repr(s)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"mqtt.port": 70000}, "mqtt.port"),
        ({"mqtt.qos": 3}, "mqtt.qos"),
        ({"mqtt.bogus": 1}, "mqtt.bogus"),
        ({"runtime.accelerator": "tpu"}, "runtime.accelerator"),
        ({"model.score_threshold": 1.5}, "model.score_threshold"),
        ({"model.path": "/nonexistent.tflite"}, "model.path"),
        ({"device_id": "a/b"}, "device_id"),
        ({"mqtt.topic_prefix": "edge/#"}, "mqtt.topic_prefix"),
        ({"mqtt.topic_prefix": "site\x01a"}, "mqtt.topic_prefix: holds U+0001"),  # mosquitto drops such a client
        ({"mqtt.topic_prefix": "site\ufffe"}, "mqtt.topic_prefix: holds U+FFFE"),
        ({"mqtt.protocol": 4}, "mqtt.protocol"),
        ({"health.interval_s": 0}, "health.interval_s"),
    ],
)
def test_invalid_values_name_the_key(overrides: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(None, overrides)
    assert str(err.value).startswith(key)


def test_mqtt_5_written_as_a_number_is_mqtt_5(tmp_path: Path) -> None:
    """`protocol = 5` in TOML, or `--set mqtt.protocol=5` (read as JSON), is the number 5: it was refused
    with "Input should be '3.1.1' or '5'", which says what was written."""
    assert load_settings(None, {"mqtt.protocol": 5}).mqtt.protocol == "5"
    cfg = tmp_path / "m.toml"
    cfg.write_text("[mqtt]\nprotocol = 5\n")
    assert load_settings(cfg).mqtt.protocol == "5"
    r = run_cli("config", "--set", "mqtt.protocol=5")
    assert r.returncode == 0 and json.loads(r.stdout)["mqtt"]["protocol"] == "5", r.stdout + r.stderr


@pytest.mark.parametrize(
    ("section", "key", "value", "part"),
    [
        ("http", "port", 8080, "the HTTP side"),
        ("homeassistant", "discovery_prefix", "ha", "Home Assistant discovery"),
        ("escalation", "low", 0.2, "escalation"),
    ],
)
def test_settings_of_a_part_that_is_off_are_refused_unless_it_is_off_on_purpose(
    tmp_path: Path, section: str, key: str, value: object, part: str
) -> None:
    """`http.port` with the status page off, or `homeassistant.discovery_prefix` with discovery off, was taken
    and never read: the page or the entities never came, and nothing said why."""
    with pytest.raises(ConfigError) as err:
        load_settings(None, {f"{section}.{key}": value})
    assert str(err.value).startswith(f"{section}: {key}: set, but {part} is off"), err.value
    assert "enabled = true" in str(err.value)
    for enabled in (True, False):  # turned on, or off on purpose (kept for later): taken
        s = load_settings(None, {f"{section}.{key}": value, f"{section}.enabled": enabled})
        assert getattr(getattr(s, section), key) == value
    cfg = tmp_path / "off.toml"  # the same from a file, through the command every other one shares
    cfg.write_text(f"[{section}]\n{key} = {json.dumps(value)}\n")
    r = run_cli("config", "--config", str(cfg))
    assert r.returncode == 2 and f"{section}: {key}: set, but {part} is off" in r.stderr, r.stderr


def test_unknown_env_and_file_keys_are_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EDGE_AGENT_MQTT__HOSTNAME", "x")
    with pytest.raises(ConfigError, match="EDGE_AGENT_MQTT__HOSTNAME"):
        load_settings()
    monkeypatch.delenv("EDGE_AGENT_MQTT__HOSTNAME")
    f = tmp_path / "c.toml"
    f.write_text("[source]\nurl = 'x'\n")
    with pytest.raises(ConfigError, match=r"source\.url: unknown setting"):
        load_settings(f)
    f.write_text("[source\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_settings(f)
    # as Windows' Notepad saves it: a byte order mark first, which TOML does not allow; said so
    f.write_bytes(b"\xef\xbb\xbfdevice_id = 'cam'\r\n")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*byte order mark: save it as UTF-8 without one"):
        load_settings(f)
    # YAML (as Frigate and Home Assistant are configured) or JSON, whatever the file's name: said so, with
    # how a table looks in TOML; a TOML file with a mistake in it gets no such guess
    for name, text, said in (("c.toml", "# porch\nmqtt:\n  host: broker\n", "this looks like YAML"),
                             ("config.yml", "device_id: porch\n", "this looks like YAML"),
                             ("c.toml", '{"mqtt": {"host": "broker"}}', "this looks like JSON")):
        g = tmp_path / name
        g.write_text(text)
        with pytest.raises(ConfigError) as err:
            load_settings(g)
        assert said in str(err.value) and '[mqtt] on a line' in str(err.value), str(err.value)
    f.write_text("[mqtt\nhost = 'x'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert "looks like" not in str(err.value), str(err.value)
    # saved in Latin-1, or nested past the parser's recursion: each ended `config`, `check` and `run` in a
    # traceback (exit 1, which systemd restarts) instead of the refusal (exit 2, which it does not)
    for raw, why in ((b"device_id = 'cam\xe9ra'\n", r"not UTF-8 text \(byte 16 is 0xe9\); save it as UTF-8"),
                     (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "arrays or tables nested too deep")):
        f.write_bytes(raw)
        with pytest.raises(ConfigError, match=f"invalid TOML: {why}"):
            load_settings(f)
        for command in ("config", "run"):
            r = run_cli(command, "--config", str(f), "--mqtt-port", "1")
            assert r.returncode == 2 and "invalid TOML" in r.stderr and "Traceback" not in r.stderr, r.stderr
    # the same depth as JSON in the environment, or after --set
    deep = "[" * 20000 + "]" * 20000
    for args, env, said in ((["--set", f"pipelines={deep}"], {}, "pipelines: Input should be a valid list"),
                            ([], {"EDGE_AGENT_PIPELINES": deep}, "EDGE_AGENT_* variable is nested too deep")):
        r = run_cli("run", "--mqtt-port", "1", *args, env=env)
        assert r.returncode == 2 and said in r.stderr and "Traceback" not in r.stderr, r.stderr[-500:]


def test_a_mistyped_key_gets_the_closest_setting_wherever_it_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As a mistyped flag or command gets the closest one: in a file, after --set, in the environment
    and inside a pipeline's table, the unknown key is named with the setting it is likely a typo of,
    among those of the table it is in. A pipeline's model is a name or a table: a table with a typo
    is said as such, without the tags of the union in the key, nor that it is not a name."""
    f = tmp_path / "c.toml"
    f.write_text("[mqtt]\nhots = 'broker'\n[source]\nurl = 'x'\n")
    with pytest.raises(ConfigError) as err:
        load_settings(f)
    assert "mqtt.hots: unknown setting (did you mean 'host'?)" in str(err.value)
    assert "source.url: unknown setting (did you mean 'uri'?)" in str(err.value)
    with pytest.raises(ConfigError, match=r"scene\.zones\.0\.lables: unknown setting \(did you mean 'labels'\?\)"):
        load_settings(None, {"scene.zones": [{"name": "a", "points": [[0, 0], [1, 0], [1, 1]], "lables": []}]})
    with pytest.raises(ConfigError, match=r"models\.f\.pathh: unknown setting \(did you mean 'path'\?\)"):
        load_settings(None, {"models": {"f": {"pathh": "x"}}})
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"pipelines": [{"name": "door", "model": {"pathh": "x"}, "source": {"fsp": 5}}]})
    said = str(err.value)
    assert "pipeline 'door': model.pathh: unknown setting (did you mean 'path'?)" in said, said
    assert "pipeline 'door': source.fsp: unknown setting (did you mean 'fps'?)" in said, said
    assert "ModelConfig" not in said and "valid string" not in said, said
    # neither a name nor a table: both are said
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"pipelines": [{"name": "door", "model": 5}]})
    assert "valid string" in str(err.value) and "valid dictionary" in str(err.value)
    # nothing close: no guess
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"mqtt.zzzzzz": 1})
    assert str(err.value).endswith("mqtt.zzzzzz: unknown setting"), err.value
    # one value where only a table goes (`mqtt.tls = true`): the table's keys, not pydantic's class name
    f.write_text("[mqtt]\ntls = true\n")
    for args in ((f,), (None, {"mqtt.tls": "true"}), (None, {"pipelines": [{"name": "door", "source": "x"}]})):
        with pytest.raises(ConfigError) as err:
            load_settings(*args)  # type: ignore[arg-type]
        said = str(err.value)
        assert "a table of settings (" in said and "not one value: set one of them, e.g. " in said, said
        assert "Config" not in said, said
    with pytest.raises(ConfigError, match=r"mqtt\.tls: a table of settings \(enabled, ca_file"):
        load_settings(f)
    # a list that is not one gets an example of its own kind: zones of tables, a zone's points of pairs;
    # --set and the environment only where they can name the key (not inside a list or a pipeline)
    zone = '[{"name": "door", "points": [[0.1, 0.5], [0.6, 0.5], [0.6, 1], [0.1, 1]]}]'
    for over, said in (
        ({"scene.zones": "door"}, f"scene.zones: Input should be a valid list (write a list as JSON: --set "
                                  f"'scene.zones={zone}', EDGE_AGENT_SCENE__ZONES='{zone}')"),
        ({"scene.zones": [{"name": "a", "points": "x"}]},
         "scene.zones.0.points: Input should be a valid list (write it as JSON, e.g. [[0.1, 0.5], [0.6, 0.5], "
         "[0.6, 1]])"),
        ({"pipelines": [{"name": "a", "scene": {"zones": "x"}}]},
         f"pipeline 'a': scene.zones: Input should be a valid list (write it as JSON, e.g. {zone})"),
    ):
        with pytest.raises(ConfigError) as err:
            load_settings(None, over)
        assert said in str(err.value), str(err.value)
    monkeypatch.setenv("EDGE_AGENT_MQTT__PASWORD", "x")
    with pytest.raises(ConfigError, match=r"EDGE_AGENT_MQTT__PASWORD: unknown setting 'pasword' \(did you mean "
                                          r"EDGE_AGENT_MQTT__PASSWORD\?\)"):
        load_settings()
    monkeypatch.delenv("EDGE_AGENT_MQTT__PASWORD")
    monkeypatch.setenv("EDGE_AGENT_MQTTT__HOST", "x")  # the typo at the start: the rest of the name kept
    with pytest.raises(ConfigError, match=r"unknown setting 'mqttt' \(did you mean EDGE_AGENT_MQTT__HOST\?\)"):
        load_settings()
    monkeypatch.delenv("EDGE_AGENT_MQTTT__HOST")


def test_a_path_a_shell_would_have_expanded_is_said_to_be_written_out(tmp_path: Path) -> None:
    """`~/models/door.tflite` in a configuration file stays as it is written (and under systemd the
    agent's home is not the user's): "file not found" alone sent people looking for a missing file."""
    f = tmp_path / "c.toml"
    for written in ("~/models/door.tflite", "$HOME/models/door.tflite"):
        f.write_text(f'[model]\npath = "{written}"\n')
        with pytest.raises(ConfigError) as err:
            load_settings(f)
        assert str(err.value) == (f"model.path: file not found: {written} (~ and $VARIABLES are not expanded "
                                  "here: write the full path)")
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"model.labels": str(tmp_path / "none.txt")})
    assert str(err.value) == f"model.labels: file not found: {tmp_path / 'none.txt'}"  # nothing to expand
    # the file itself: `ExecStart=... --config ~/edge.toml` is not expanded either; a directory is no file
    with pytest.raises(ConfigError, match=r"--config: file not found: ~/edge\.toml \(~ and \$VARIABLES"):
        load_settings(Path("~/edge.toml"))
    with pytest.raises(ConfigError) as err:
        load_settings(tmp_path)
    assert str(err.value) == f"--config: {tmp_path} is a directory, not a file"


def test_a_bad_value_from_the_environment_names_its_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """A value the environment gave was named by its key alone (`mqtt.port: Input should be a valid
    integer`), and a unit's Environment= line is not where one looks first. The variable is named, its
    own or that of the table or list holding the key; a value the command line gave instead is not
    put on it. A table that is not JSON gets a table as its example, not a list of words."""
    monkeypatch.setenv("EDGE_AGENT_MQTT__PORT", "abc")
    with pytest.raises(ConfigError, match=r"mqtt\.port \(from EDGE_AGENT_MQTT__PORT\): Input should be a valid int"):
        load_settings()
    with pytest.raises(ConfigError) as err:
        load_settings(None, {"mqtt.port": 70000})
    assert str(err.value) == "mqtt.port: Input should be less than or equal to 65535"
    monkeypatch.delenv("EDGE_AGENT_MQTT__PORT")
    monkeypatch.setenv("EDGE_AGENT_SCENE__ZONES", '[{"name": "a", "points": [[0, 0], [2, 0], [1, 1]]}]')
    with pytest.raises(ConfigError, match=r"scene\.zones\.0\.points \(from EDGE_AGENT_SCENE__ZONES\): point 1"):
        load_settings()
    monkeypatch.delenv("EDGE_AGENT_SCENE__ZONES")
    monkeypatch.setenv("EDGE_AGENT_MQTT", '{"host": "broker"')
    with pytest.raises(ConfigError, match=r"e\.g\. EDGE_AGENT_MQTT='\{\"host\": \"localhost\"\}'"):
        load_settings()


def test_every_field_has_a_description() -> None:
    rows = describe_fields(Settings)
    assert len(rows) > 40
    missing = [key for key, _, _, desc in rows if not desc]
    assert missing == []
    envs = {env for _, env, _, _ in rows}
    assert "EDGE_AGENT_MQTT__TLS__CA_FILE" in envs and "EDGE_AGENT_HEALTH__INTERVAL_S" in envs


def test_cli_config_masks_secret_and_bad_config_exits_2(tmp_path: Path) -> None:
    ok = run_cli("config", "--set", "mqtt.password=topsecret", "--mqtt-port", "1884")
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["mqtt"]["port"] == 1884 and doc["mqtt"]["password"] == "**********"
    assert "topsecret" not in ok.stdout + ok.stderr
    bad = run_cli("config", "--set", "mqtt.port=0")
    assert bad.returncode == 2
    assert "mqtt.port" in bad.stderr
    env_bad = run_cli("run", env={"EDGE_AGENT_SOURCE__FPS": "-1"})
    assert env_bad.returncode == 2 and "source.fps" in env_bad.stderr
    usage = run_cli("run", "--set", "novalue")
    assert usage.returncode == 2


def test_password_from_file_and_systemd_credential(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    s = load_settings(None, {"mqtt.password_file": str(f)})
    assert s.mqtt.password is not None and s.mqtt.password.get_secret_value() == "from-file"
    f.write_bytes(b"\xef\xbb\xbffrom-notepad\r\n")  # saved by Notepad: the mark and line end are no part of it
    s = load_settings(None, {"mqtt.password_file": str(f)})
    assert s.mqtt.password is not None and s.mqtt.password.get_secret_value() == "from-notepad"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "mqtt_password").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    s2 = load_settings()
    assert s2.mqtt.password is not None and s2.mqtt.password.get_secret_value() == "from-credential"
    assert "from-credential" not in json.dumps(masked_dump(s2))
    with pytest.raises(ConfigError, match="mqtt"):
        load_settings(None, {"mqtt.password_file": str(tmp_path / "absent")})


@pytest.mark.parametrize("cmd", [[], ["run"], ["check"], ["inspect"], ["predict"], ["config"], ["listen"]])
def test_help_everywhere_and_usage_errors_exit_2(cmd: list[str]) -> None:
    h = run_cli(*cmd, "--help")
    assert h.returncode == 0 and "usage: edge-agent" in h.stdout
    bad = run_cli(*cmd, "--no-such-flag")
    assert bad.returncode == 2 and "error" in bad.stderr


def test_the_broker_of_a_refused_configuration_is_read_from_the_same_places(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `run` says a refusal with: the device id and broker from the file, the environment and --set,
    everything else ignored; nothing where the broker settings themselves are refused."""
    from edge_agent.config import broker_of

    cfg = tmp_path / "agent.toml"
    cfg.write_text('device_id = "filed"\n[mqtt]\nhost = "broker.lan"\ntopic_prefix = "site"\n[source]\nuri = "0"\n'
                   'realtime = false\n[nonsense]\nx = 1\n')
    monkeypatch.setenv("EDGE_AGENT_MQTT__PORT", "8883")
    device, mq = broker_of(cfg, {"device_id": "set", "source.width": 5}) or ("", None)
    assert device == "set" and mq is not None and (mq.host, mq.port, mq.topic_prefix) == ("broker.lan", 8883, "site")
    monkeypatch.setenv("EDGE_AGENT_MQTT__NOPE", "1")  # the broker section is what is refused
    assert broker_of(cfg, {}) is None
    monkeypatch.delenv("EDGE_AGENT_MQTT__NOPE")
    cfg.write_text("device_id = [\n")  # no file to read
    assert broker_of(cfg, {}) is None
