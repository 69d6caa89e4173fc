"""``python -m pipeline submit`` against a stand-in for the KFP API server on 127.0.0.1.

The server speaks the part of the v2beta1 REST surface that ``kfp.Client`` 2.17 calls for
``create_run_from_pipeline_package`` (the URLs of kfp_server_api's generated client): the health
check, experiment lookup/creation and run creation. It records what arrives.
"""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
import yaml


class FakeKfp(BaseHTTPRequestHandler):
    requests: list  # (method, path, query, body), set per server

    def _reply(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self):
        url = urlparse(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n)) if n else None
        self.server.requests.append((self.command, url.path, parse_qs(url.query), body))
        return url.path, body

    def _html(self) -> None:
        """Something else at that address (a UI, a proxy's login page): a page, whatever the request."""
        data = b"<html><body>Sign in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path, _ = self._record()
        if self.server.mode == "html":
            return self._html()
        if path == "/apis/v2beta1/healthz":
            return self._reply(200, {"multi_user": False, "pipeline_store": "database"})
        if path == "/apis/v2beta1/experiments":
            return self._reply(200, {"experiments": self.server.experiments, "total_size": len(self.server.experiments)})
        self._reply(404, {"error": f"not served: GET {path}"})

    def do_POST(self):
        path, body = self._record()
        if self.server.mode == "html":
            return self._html()
        if path == "/apis/v2beta1/experiments":
            exp = {**body, "experiment_id": "exp-0001"}
            self.server.experiments.append(exp)
            return self._reply(200, exp)
        if path == "/apis/v2beta1/runs":
            if self.server.mode == "refuse":
                return self._reply(400, {"error": "Invalid input error: pipeline spec is invalid", "code": 3,
                                         "message": "Invalid input error: pipeline spec is invalid"})
            return self._reply(200, {**body, "run_id": "run-0001", "state": "PENDING"})
        self._reply(404, {"error": f"not served: POST {path}"})

    def log_message(self, *args):  # keep pytest output quiet
        pass


@pytest.fixture
def kfp_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeKfp)
    server.requests, server.experiments, server.mode = [], [], "kfp"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline:FutureWarning")
def test_submit_sends_the_compiled_package_and_parameters(kfp_server, compiled, tmp_path, monkeypatch, capsys):
    from pipeline.__main__ import main

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/kfp/context.json from the machine
    host = f"http://127.0.0.1:{kfp_server.server_address[1]}"
    rc = main(["submit", "--host", host, "--experiment-name", "tcnet-test", "--run-name", "smoke",
               "--data-repo-url", "https://git.example.com/tcnet.git", "--data-rev", "v0.1.0", "--gpus", "2"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "submitted run run-0001" in out and "(experiment 'tcnet-test', created now: it did not exist;" in out

    calls = [(m, p) for m, p, _, _ in kfp_server.requests]
    assert calls == [
        ("GET", "/apis/v2beta1/healthz"),
        ("GET", "/apis/v2beta1/experiments"),  # lookup by name: none yet (ours, to say "created")
        ("GET", "/apis/v2beta1/experiments"),  # kfp's create_experiment looks again
        ("POST", "/apis/v2beta1/experiments"),
        ("POST", "/apis/v2beta1/runs"),
    ]
    lookup = json.loads(kfp_server.requests[1][2]["filter"][0])
    assert lookup["predicates"][0]["stringValue"] == "tcnet-test"
    assert kfp_server.requests[3][3]["display_name"] == "tcnet-test"

    run = kfp_server.requests[4][3]
    assert run["experiment_id"] == "exp-0001" and run["display_name"] == "smoke"
    # the package that arrives is the one `compile` writes with the same options
    _, spec, platform = compiled
    assert run["pipeline_spec"]["pipeline_spec"] == json.loads(json.dumps(spec))
    assert run["pipeline_spec"]["platform_spec"] == json.loads(json.dumps(platform))
    assert run["runtime_config"]["parameters"] == {
        "data_repo_url": "https://git.example.com/tcnet.git", "data_rev": "v0.1.0"}
    defaults = run["pipeline_spec"]["pipeline_spec"]["root"]["inputDefinitions"]["parameters"]
    assert yaml.safe_load(defaults["params_yaml"]["defaultValue"])["profile"] == "demo"


def test_submit_without_a_data_repository_says_what_to_pass(monkeypatch, capsys):
    import pipeline.pipeline as pl
    from pipeline.__main__ import main

    monkeypatch.setattr(pl, "default_data_source", lambda *a: ("", ""))
    assert main(["submit", "--host", "http://127.0.0.1:9"]) == 2
    assert "--data-repo-url" in capsys.readouterr().err
    monkeypatch.setattr(pl, "default_data_source", lambda *a: ("/work/main", "abc"))  # an origin that is a path
    assert main(["submit", "--host", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert "is a path on this machine, which no pod can clone" in err and "cannot reach" not in err
    from pipeline.__main__ import _local_path

    assert [_local_path(u) for u in ("../r", "file:///r", "/srv/a:b", "https://h/r.git", "ssh://git@h/r",
                                     "git@github.com:o/r.git", "github.com:o/r.git", "myhost:repos/r.git")] \
        == [True, True, True, False, False, False, False, False]


@pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline:FutureWarning")
def test_a_token_in_the_data_url_stays_out_of_the_package(kfp_server, tmp_path, monkeypatch, capsys):
    from pipeline.__main__ import main
    from tcnet.provenance import without_credentials

    assert without_credentials("https://user:pw@git.example.com/x.git") == "https://git.example.com/x.git"
    assert without_credentials("git@github.com:org/x.git") == "git@github.com:org/x.git"  # ssh: not a secret
    monkeypatch.setenv("HOME", str(tmp_path))
    url = "https://SECRETTOKEN@git.example.com/tcnet.git"
    out = tmp_path / "pipeline.yaml"
    assert main(["compile", "--out", str(out), "--data-repo-url", url]) == 0
    assert "SECRETTOKEN" not in out.read_text() and "https://git.example.com/tcnet.git" in out.read_text()
    assert "user/token part is not written into the package" in capsys.readouterr().err

    host = f"http://127.0.0.1:{kfp_server.server_address[1]}"
    assert main(["submit", "--host", host, "--data-repo-url", url, "--data-rev", "v1"]) == 0
    run = kfp_server.requests[-1][3]
    assert "SECRETTOKEN" not in json.dumps(run["pipeline_spec"])
    assert run["runtime_config"]["parameters"]["data_repo_url"] == url  # the run itself gets the full URL


@pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline:FutureWarning")
def test_cli_errors_are_one_line_not_tracebacks(tmp_path, capsys):
    from pipeline.__main__ import main

    assert main(["compile", "--params", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nope.yaml" in err and "Traceback" not in err
    assert main(["compile", "--gpus", "-1", "--out", str(tmp_path / "p.yaml")]) == 2
    assert "gpus must be >= 1" in capsys.readouterr().err
    # each train task's GPUs share every run's batch: 3 cannot share the demo's 4 and 2
    assert main(["compile", "--gpus", "3", "--out", str(tmp_path / "p.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--gpus 3 does not divide train.batch_size of 40 run(s)" in err and "use --gpus 1 or 2" in err
    for uri in ("", "sqlite:///mlflow.db", "file:///tmp/mlruns"):  # would live and die inside each pod
        assert main(["compile", "--mlflow-uri", uri, "--out", str(tmp_path / "p.yaml")]) == 2
        assert "a cluster's tasks need an MLflow tracking server" in capsys.readouterr().err
    # port 9 (discard): nothing listens on it here
    assert main(["submit", "--host", "http://127.0.0.1:9", "--data-repo-url", "https://example.com/d.git"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the Kubeflow Pipelines API at http://127.0.0.1:9" in err and "Traceback" not in err
    assert not (tmp_path / "p.yaml").exists()


@pytest.mark.filterwarnings("ignore:This client only works with Kubeflow Pipeline:FutureWarning")
def test_the_servers_answers_are_told_apart(kfp_server, tmp_path, monkeypatch, capsys):
    """An existing experiment is reused and said so; a refusal gives the server's reason (not
    "unreachable"); a host that is not the KFP API is an error, not "submitted run None"."""
    from pipeline.__main__ import main

    monkeypatch.setenv("HOME", str(tmp_path))
    host = f"http://127.0.0.1:{kfp_server.server_address[1]}"
    argv = ["submit", "--host", host, "--experiment-name", "e1", "--data-repo-url", "https://g.example.com/d.git",
            "--data-rev", "v1"]
    assert main(argv) == 0 and "created now" in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "(experiment 'e1';" in out and "created" not in out
    kfp_server.mode = "refuse"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refused the request: HTTP 400" in err and "pipeline spec is invalid" in err and "cannot reach" not in err
    kfp_server.mode = "html"
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "submitted" not in err and "Traceback" not in err


def test_options_kubernetes_would_reject_are_refused_before_anything_is_written(tmp_path, capsys):
    from pipeline.__main__ import main

    out = tmp_path / "p.yaml"
    for flags, words in ((["--accelerator-type", ""], "accelerator_type must be a Kubernetes resource name"),
                         (["--train-retries", "-1"], "train_retries must be >= 0"),
                         (["--gpu-node-label", "=x"], "gpu_node_label must be KEY=VALUE"),
                         (["--train-memory", "0"], "train_memory '0' must be a whole number above 0"),
                         (["--train-memory", "0.5Gi"], "train_memory '0.5Gi' must be a whole number"),
                         (["--data-memory", "8 GB"], "data_memory '8 GB' must be"),
                         (["--dvc-secret", "My Secret"], "dvc_secret 'My Secret' is not a Kubernetes object name"),
                         (["--checkpoint-pvc", "Bad_Name"], "checkpoint_pvc 'Bad_Name' is not"),
                         (["--parallelism", "-2"], "parallelism must be >= 0"),
                         (["--mlflow-uri", "http://bob:PW@mlflow:5000"], "credentials left out here"),
                         (["--mlflow-uri", "http://"], "no valid host")):
        assert main(["compile", "--out", str(tmp_path / "new" / "p.yaml"), *flags]) == 2, flags
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1 and "PW" not in err, (flags, err)
        assert not (tmp_path / "new").exists()  # not even its folder
    from pipeline.pipeline import PipelineOptions, check_options

    long_prefix = ".".join(["a" * 60] * 4)  # a 243-character DNS prefix: a valid label key with a name
    for ok in (dict(accelerator_type="amd.com/gpu"), dict(gpu_node_label=f"{long_prefix}/gpu-node="),
               dict(train_memory="512Mi", data_memory="8G")):
        check_options(PipelineOptions(**ok))
    # a password in an ssh URL stays out of the package too (the user names the account: kept)
    assert main(["compile", "--out", str(out), "--data-repo-url", "ssh://git:SEKRET@git.example.com/d.git",
                 "--data-rev", "v1", "--mlflow-secret", "mlflow-auth"]) == 0
    text = out.read_text()
    assert "SEKRET" not in text and "ssh://git@git.example.com/d.git" in text
    platform = list(yaml.safe_load_all(text))[1]
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    secrets = [e["secretAsEnv"] for e in execs.values() if any(x.get("secretName") == "mlflow-auth"
                                                            for x in e.get("secretAsEnv", []))]
    assert len(secrets) == len(execs)  # every task: each one logs to MLflow


def test_a_local_run_refused_writes_nothing(tmp_path):
    from pipeline.pipeline import PipelineOptions, local_run

    db, work = tmp_path / "m.db", tmp_path / "work"
    with pytest.raises(ValueError, match="--gpus 3 does not divide"):
        local_run(PipelineOptions(gpus=3, mlflow_uri=f"sqlite:///{db}"), work)
    assert not db.exists() and not work.exists()
