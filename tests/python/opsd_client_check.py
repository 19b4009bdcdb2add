#!/usr/bin/env python3
"""Checks opsd's gRPC contract from a real non-Rust client.

Generates Python stubs from the project's .proto files with grpcio-tools (into
a temporary directory; nothing generated is kept), then drives one live,
single-node opsd through them: Cluster.Status, the Settings service (put, get,
compare-and-set, errors, list, delete, watch), the Resources service's typed
contract (specs and outputs as google.protobuf.Struct, times as Timestamp,
durations as Duration, outcomes as an enum, each rendered to canonical JSON by
protobuf's own json_format, and a malformed Struct or Duration refused), the
standard gRPC health service and server reflection.

Usage:
    OPSD_TOKEN=opsd1.ID.SECRET python opsd_client_check.py --addr HOST:PORT

Every call carries the token (OPSD_TOKEN, or --token-file) as the metadata
`authorization: Bearer TOKEN`; health and reflection need none.

HOST:PORT is the node's client (gRPC API) address. The node must be the only
member of its cluster. The script prints one line per check that passed and
exits non-zero with a message naming the check on the first one that fails.
Keys are written under a fresh prefix, so it can run against a node that has
other data and can run again.

Needs: grpcio, grpcio-tools, grpcio-health-checking, grpcio-reflection
(.ci/python-deps installs them in a virtualenv at target/pyenv).
"""

import argparse
import collections
import importlib
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import grpc

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROTO_FILES = ["opsd/v1/cluster.proto", "opsd/v1/settings.proto", "opsd/v1/resources.proto",
               "opsd/v1/services.proto"]

# The kind of the resource checks (tests/kinds/pycheck.toml): one work state
# whose step reports outputs, enough to see every typed field of a run.
with open(os.path.join(REPO, "tests", "kinds", "pycheck.toml"), encoding="utf-8") as kind_file:
    PYCHECK_KIND = kind_file.read()


class CheckFailed(Exception):
    pass


def expect(cond, what, expected, got):
    if not cond:
        raise CheckFailed(f"{what}: expected {expected}, got {got!r}")


def expect_code(err, code, what):
    expect(
        err.code() == code,
        what,
        f"status {code.name}",
        f"status {err.code().name}: {err.details()}",
    )


def rpc_error(fn, *args, **kwargs):
    """Calls fn and returns the grpc.RpcError it raised; None if it succeeded."""
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as err:
        return err
    return None


def generate_stubs(proto_dir, out_dir):
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc",
        "-I", proto_dir,
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *PROTO_FILES,
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise CheckFailed(f"grpc_tools.protoc failed ({res.returncode}): {res.stderr.strip()}")
    sys.path.insert(0, out_dir)
    mods = {}
    for name in ("cluster_pb2", "cluster_pb2_grpc", "settings_pb2", "settings_pb2_grpc",
                 "resources_pb2", "resources_pb2_grpc", "services_pb2", "services_pb2_grpc"):
        mods[name] = importlib.import_module(f"opsd.v1.{name}")
    return mods


# The name every opsd node certificate carries, whatever its address.
SERVER_NAME = "opsd-node"


def open_channel(addr, ca_file):
    """A channel to addr: TLS verifying the node against the cluster CA in
    ca_file (checked against the fixed name SERVER_NAME) when given, else
    plaintext (a cluster made before TLS)."""
    if not ca_file:
        return grpc.insecure_channel(addr)
    with open(ca_file, "rb") as f:
        creds = grpc.ssl_channel_credentials(root_certificates=f.read())
    return grpc.secure_channel(addr, creds, options=[("grpc.ssl_target_name_override", SERVER_NAME)])


class _Details(collections.namedtuple("_Details", ("method", "timeout", "metadata", "credentials",
                                                   "wait_for_ready", "compression")),
               grpc.ClientCallDetails):
    pass


class BearerToken(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
                  grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer TOKEN` to every call."""

    def __init__(self, token):
        self.header = ("authorization", "Bearer " + token)

    def _details(self, d):
        metadata = list(d.metadata or []) + [self.header]
        return _Details(d.method, d.timeout, metadata, d.credentials,
                        getattr(d, "wait_for_ready", None), getattr(d, "compression", None))

    def intercept_unary_unary(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation, details, request):
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation, details, requests):
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation, details, requests):
        return continuation(self._details(details), requests)


class Checker:
    def __init__(self, addr, timeout, mods, token=None, ca_file=None):
        self.addr = addr
        self.timeout = timeout
        self.c = mods["cluster_pb2"]
        self.s = mods["settings_pb2"]
        self.channel = open_channel(addr, ca_file)
        if token:
            self.channel = grpc.intercept_channel(self.channel, BearerToken(token))
        self.cluster = mods["cluster_pb2_grpc"].ClusterStub(self.channel)
        self.settings = mods["settings_pb2_grpc"].SettingsStub(self.channel)
        self.r = mods["resources_pb2"]
        self.resources = mods["resources_pb2_grpc"].ResourcesStub(self.channel)
        self.v = mods["services_pb2"]
        self.services = mods["services_pb2_grpc"].ServicesStub(self.channel)
        # A fresh prefix per run: the checks own every key under it.
        self.user = os.environ.get("OPSD_EXPECT_USER", "admin")
        self.prefix = f"pycheck/{uuid.uuid4().hex[:12]}/"

    # -- helpers -----------------------------------------------------------

    def put(self, key, value, **kw):
        return self.settings.Put(self.s.PutRequest(key=key, value=value, **kw), timeout=self.timeout)

    def get(self, key):
        return self.settings.Get(self.s.GetRequest(key=key), timeout=self.timeout)

    def delete(self, key, **kw):
        return self.settings.Delete(self.s.DeleteRequest(key=key, **kw), timeout=self.timeout)

    # -- checks ------------------------------------------------------------

    def connect(self):
        try:
            grpc.channel_ready_future(self.channel).result(timeout=self.timeout)
        except grpc.FutureTimeoutError:
            raise CheckFailed(f"no connection to {self.addr} within {self.timeout}s")
        return f"connected to {self.addr}"

    def status(self):
        # A node that has just started may still be electing itself: wait
        # (within the timeout) until it knows a leader, then check.
        deadline = time.monotonic() + self.timeout
        while True:
            st = self.cluster.Status(self.c.StatusRequest(), timeout=self.timeout)
            if st.leader_id != 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        expect(st.node_id != 0, "Status.node_id", "non-zero", st.node_id)
        expect(st.leader_id == st.node_id, "Status.leader_id (single node)", f"node_id {st.node_id}", st.leader_id)
        expect(st.role == "leader", "Status.role (single node)", '"leader"', st.role)
        expect(len(st.members) == 1, "Status.members", "exactly one member", [str(m) for m in st.members])
        m = st.members[0]
        expect(m.id == st.node_id, "Status.members[0].id", st.node_id, m.id)
        expect(m.voter, "Status.members[0].voter", True, m.voter)
        expect(st.cluster_id != "", "Status.cluster_id", "non-empty", st.cluster_id)
        return f"Cluster.Status: node {st.node_id} leads itself, term {st.term}, one voter, version {st.version!r}"

    def put_get(self):
        key, value = self.prefix + "roundtrip", "hello from python ✓"
        put = self.put(key, value)
        expect(put.revision > 0, "Put.revision", "> 0", put.revision)
        expect(not put.HasField("previous"), "Put.previous for a new key", "unset", put.previous)
        got = self.get(key)
        s = got.setting
        expect(s.key == key, "Get.setting.key", key, s.key)
        expect(s.value == value, "Get.setting.value", value, s.value)
        expect(s.mod_revision == put.revision, "Get.setting.mod_revision", f"the put's revision {put.revision}", s.mod_revision)
        expect(s.create_revision == put.revision, "Get.setting.create_revision", put.revision, s.create_revision)
        expect(s.version == 1, "Get.setting.version", 1, s.version)
        expect(got.revision >= put.revision, "Get.revision", f">= {put.revision}", got.revision)
        self.roundtrip = (key, value, put.revision)
        return f"Settings.Put then Get: value, mod_revision {put.revision} and version 1 round-trip"

    def stale_cas(self):
        key, value, rev = self.roundtrip
        err = rpc_error(self.put, key, "clobbered", expected_revision=rev + 1000)
        expect(err is not None, "Put with a wrong expected_revision", "an error", "success")
        expect_code(err, grpc.StatusCode.FAILED_PRECONDITION, "Put with a wrong expected_revision")
        s = self.get(key).setting
        expect(s.value == value and s.mod_revision == rev, "value after a failed compare-and-set",
               f"unchanged ({value!r} at {rev})", f"{s.value!r} at {s.mod_revision}")
        # And the right expected revision succeeds.
        put = self.put(key, "v2", expected_revision=rev)
        expect(put.revision > rev, "compare-and-set Put.revision", f"> {rev}", put.revision)
        expect(put.previous.value == value, "compare-and-set Put.previous.value", value, put.previous.value)
        s = self.get(key).setting
        expect(s.version == 2, "version after a second put", 2, s.version)
        return "Settings.Put with a wrong expected_revision fails FAILED_PRECONDITION (and the right one succeeds)"

    def get_missing(self):
        err = rpc_error(self.get, self.prefix + "missing")
        expect(err is not None, "Get of a missing key", "an error", "success")
        expect_code(err, grpc.StatusCode.NOT_FOUND, "Get of a missing key")
        return "Settings.Get of a missing key fails NOT_FOUND"

    def services_api(self):
        local = self.services.Local(self.v.LocalRequest(), timeout=self.timeout)
        expect(local.node_id > 0 and local.lb_host != "", "Services.Local", "a node id and an lb host",
               (local.node_id, local.lb_host))
        name = "pycheck-" + uuid.uuid4().hex[:8]
        err = rpc_error(self.services.Resolve, self.v.ResolveRequest(name=name), timeout=self.timeout)
        expect(err is not None, "Resolve of a missing service", "an error", "success")
        expect_code(err, grpc.StatusCode.NOT_FOUND, "Resolve of a missing service")
        expect(name in (err.details() or ""), "Resolve of a missing service: message",
               f"a message naming {name}", err.details())
        return (f"Services.Local answers (node {local.node_id}, lb host {local.lb_host}); "
                f"Services.Resolve of a missing service fails NOT_FOUND naming it")

    def empty_key(self):
        err = rpc_error(self.put, "", "value")
        expect(err is not None, "Put with an empty key", "an error", "success")
        expect_code(err, grpc.StatusCode.INVALID_ARGUMENT, "Put with an empty key")
        expect("key" in (err.details() or "").lower(), "Put with an empty key: message",
               'a message mentioning "key"', err.details())
        return f"Settings.Put with an empty key fails INVALID_ARGUMENT ({err.details()!r})"

    def list_prefix(self):
        base = self.prefix + "list/"
        names = ["m", "b", "z", "a/1", "a"]
        for n in names:
            self.put(base + n, "v-" + n)
        # A key beside the prefix that must not be listed.
        self.put(self.prefix + "listx", "outside")
        res = self.settings.List(self.s.ListRequest(prefix=base), timeout=self.timeout)
        keys = [s.key for s in res.settings]
        want = sorted(base + n for n in names)
        expect(keys == want, "List by prefix: keys", want, keys)
        for s in res.settings:
            expect(s.value == "v-" + s.key[len(base):], f"List: value of {s.key}", "v-" + s.key[len(base):], s.value)
        return f"Settings.List by prefix returns its {len(want)} keys in key order"

    def delete_get(self):
        key = self.prefix + "doomed"
        put = self.put(key, "short-lived")
        d = self.delete(key)
        expect(d.revision > put.revision, "Delete.revision", f"> {put.revision}", d.revision)
        expect(d.previous.key == key and d.previous.value == "short-lived", "Delete.previous",
               f"{key}=short-lived", f"{d.previous.key}={d.previous.value}")
        err = rpc_error(self.get, key)
        expect(err is not None, "Get after Delete", "an error", "success")
        expect_code(err, grpc.StatusCode.NOT_FOUND, "Get after Delete")
        return "Settings.Delete then Get fails NOT_FOUND"

    def watch(self):
        base = self.prefix + "watch/"
        key = base + "k"
        call = self.settings.Watch(self.s.WatchRequest(prefix=base), timeout=self.timeout * 3)
        events = queue.Queue()

        def reader():
            try:
                for ev in call:
                    events.put(ev)
                    if events.qsize() >= 2:
                        break
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.CANCELLED:
                    events.put(err)
            except Exception as err:  # surfaced to the main thread
                events.put(err)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        # The server sends its response headers once the watch is registered,
        # so everything written after this is in the stream.
        try:
            call.initial_metadata()
        except grpc.RpcError as err:
            raise CheckFailed(f"Watch: the call failed: {err.code().name}: {err.details()}")
        self.put(self.prefix + "not-watched", "x")  # outside the prefix: must not appear
        put = self.put(key, "watched")
        d = self.delete(key)
        got = []
        try:
            for _ in range(2):
                item = events.get(timeout=self.timeout)
                if isinstance(item, Exception):
                    raise CheckFailed(f"Watch: the stream failed: {item}")
                got.append(item)
        except queue.Empty:
            raise CheckFailed(f"Watch: expected PUT then DELETE events, got {len(got)} event(s) within {self.timeout}s: {got}")
        finally:
            call.cancel()
            t.join(timeout=5)
        t_put, t_del = self.s.WatchEvent.PUT, self.s.WatchEvent.DELETE
        e1, e2 = got
        expect(e1.type == t_put, "Watch: first event type", "PUT", self.s.WatchEvent.Type.Name(e1.type))
        expect(e1.setting.key == key and e1.setting.value == "watched", "Watch: PUT event setting",
               f"{key}=watched", f"{e1.setting.key}={e1.setting.value}")
        expect(e1.revision == put.revision, "Watch: PUT event revision", f"the put's revision {put.revision}", e1.revision)
        expect(e2.type == t_del, "Watch: second event type", "DELETE", self.s.WatchEvent.Type.Name(e2.type))
        expect(e2.setting.key == key, "Watch: DELETE event key", key, e2.setting.key)
        expect(e2.revision == d.revision, "Watch: DELETE event revision", f"the delete's revision {d.revision}", e2.revision)
        expect(e2.revision > e1.revision, "Watch: revisions", "increasing", [e1.revision, e2.revision])
        expect(e2.setting.mod_revision == d.revision, "Watch: DELETE event setting.mod_revision",
               f"the delete's revision {d.revision}", e2.setting.mod_revision)
        return f"Settings.Watch on a prefix streams PUT@{e1.revision} then DELETE@{e2.revision}"

    def resources_typed(self):
        from google.protobuf import duration_pb2, json_format, struct_pb2

        r = self.r
        md = ()
        self.resources.ApplyKind(r.ApplyKindRequest(source=PYCHECK_KIND), timeout=self.timeout, metadata=md)
        name = "py-" + uuid.uuid4().hex[:12]
        spec = struct_pb2.Struct()
        spec.update({"replicas": 2, "image": {"tag": "v2"}, "ports": [80, 443], "debug": False})
        change = self.resources.Create(r.CreateResourceRequest(kind="pycheck", name=name, spec=spec),
                                       timeout=self.timeout, metadata=md)
        res = json_format.MessageToDict(change.resource, preserving_proto_field_name=True)
        expect(res.get("spec") == {"replicas": 2.0, "image": {"tag": "v2"}, "ports": [80.0, 443.0], "debug": False},
               "Create: resource.spec (a Struct)", "the spec sent", res.get("spec"))
        created = res.get("created_at", "")
        expect(created.endswith("Z") and "T" in created, "Create: resource.created_at (a Timestamp as RFC 3339)",
               "an RFC 3339 time", created)

        run = self.resources.Do(r.DoRequest(kind="pycheck", name=name, event="go", reason="check"),
                                timeout=self.timeout, metadata=md).run
        deadline = time.monotonic() + self.timeout
        while run.outcome == r.RUN_OUTCOME_RUNNING and time.monotonic() < deadline:
            time.sleep(0.1)
            run = self.resources.GetRun(r.GetRunRequest(run_id=run.run_id), timeout=self.timeout)
        expect(run.outcome == r.RUN_OUTCOME_SUCCEEDED, "Do: the run's outcome (an enum)", "RUN_OUTCOME_SUCCEEDED",
               r.RunOutcome.Name(run.outcome))
        d = json_format.MessageToDict(run, preserving_proto_field_name=True)
        expect(d.get("outcome") == "RUN_OUTCOME_SUCCEEDED" and d.get("source") == "TRIGGER_SOURCE_API",
               "Run in canonical JSON: outcome and source", "RUN_OUTCOME_SUCCEEDED, TRIGGER_SOURCE_API",
               (d.get("outcome"), d.get("source")))
        expect(d.get("principal") == self.user, "Run.principal (the token's user)", self.user, d.get("principal"))
        expect(d.get("outputs") == {"answer": 42.0, "tags": ["a"]}, "Run.outputs (a Struct)",
               {"answer": 42, "tags": ["a"]}, d.get("outputs"))
        duration = d.get("duration", "")
        expect(duration.endswith("s"), "Run.duration (a Duration as JSON)", 'like "0.012s"', duration)
        expect(run.finished_at.ToMilliseconds() >= run.started_at.ToMilliseconds() > 0,
               "Run.started_at <= finished_at", "ordered times", (d.get("started_at"), d.get("finished_at")))

        # Filters are typed too: an outcome enum and a Duration.
        listed = self.resources.ListRuns(
            r.ListRunsRequest(kind="pycheck", name=name, outcome=r.RUN_OUTCOME_SUCCEEDED,
                              since=duration_pb2.Duration(seconds=3600)), timeout=self.timeout)
        ids = [x.run_id for x in listed.runs]
        expect(run.run_id in ids and all(x.outcome == r.RUN_OUTCOME_SUCCEEDED for x in listed.runs),
               "ListRuns(outcome=SUCCEEDED, since=1h)", f"succeeded runs including {run.run_id}", listed.runs)
        failed = self.resources.ListRuns(
            r.ListRunsRequest(kind="pycheck", name=name, outcome=r.RUN_OUTCOME_FAILED), timeout=self.timeout)
        expect(len(failed.runs) == 0, "ListRuns(outcome=FAILED)", "no runs", failed.runs)

        # Malformed values are refused naming the field.
        err = rpc_error(self.resources.ListRuns, r.ListRunsRequest(since=duration_pb2.Duration(seconds=-5)),
                        timeout=self.timeout)
        expect_code(err, grpc.StatusCode.INVALID_ARGUMENT, "ListRuns with a negative since")
        expect("since" in err.details(), "ListRuns negative since: message", "to name since", err.details())
        bad = struct_pb2.Struct()
        bad.fields["hole"].CopyFrom(struct_pb2.Value())  # a Value with no kind: no JSON value
        err = rpc_error(self.resources.Create, r.CreateResourceRequest(kind="pycheck", name=name + "-bad", spec=bad),
                        timeout=self.timeout)
        expect_code(err, grpc.StatusCode.INVALID_ARGUMENT, "Create with a Value that has no kind")
        expect("spec.hole" in err.details(), "Create bad spec: message", "to name spec.hole", err.details())
        return (f"Resources: spec/outputs as Struct, times as Timestamp ({created}), duration {duration}, "
                f"outcome {d['outcome']}; bad Struct and Duration refused")

    def health(self):
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        stub = health_pb2_grpc.HealthStub(self.channel)
        serving = health_pb2.HealthCheckResponse.SERVING
        for service in ("", "opsd.v1.Cluster", "opsd.v1.Settings"):
            try:
                res = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout)
            except grpc.RpcError as err:
                raise CheckFailed(f"health Check({service!r}): expected SERVING, got {err.code().name}: {err.details()}")
            expect(res.status == serving, f"health Check({service!r})", "SERVING",
                   health_pb2.HealthCheckResponse.ServingStatus.Name(res.status))
        return "grpc.health.v1.Health reports SERVING for the server and both opsd services"

    def reflection(self):
        # grpcio-reflection ships the v1alpha messages only; the v1 protocol
        # is wire-identical, so the same messages serve a raw call to either.
        from grpc_reflection.v1alpha import reflection_pb2 as rpb
        from google.protobuf import descriptor_pb2

        def ask(version, request):
            method = self.channel.stream_stream(
                f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                request_serializer=rpb.ServerReflectionRequest.SerializeToString,
                response_deserializer=rpb.ServerReflectionResponse.FromString,
            )
            res = list(method(iter([request]), timeout=self.timeout))
            expect(len(res) == 1, f"reflection ({version}): responses", 1, len(res))
            if res[0].HasField("error_response"):
                e = res[0].error_response
                raise CheckFailed(f"reflection ({version}): error {e.error_code}: {e.error_message}")
            return res[0]

        version = None
        for v in ("v1", "v1alpha"):
            try:
                res = ask(v, rpb.ServerReflectionRequest(list_services=""))
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                    continue
                raise CheckFailed(f"reflection ({v}) list_services: {err.code().name}: {err.details()}")
            version = v
            break
        if version is None:
            raise CheckFailed("reflection: neither grpc.reflection.v1 nor v1alpha is served (UNIMPLEMENTED)")
        services = sorted(s.name for s in res.list_services_response.service)
        for want in ("opsd.v1.Cluster", "opsd.v1.Settings"):
            expect(want in services, "reflection list_services", f"to include {want}", services)
        # The descriptors are served too: a client can build the API from them.
        res = ask(version, rpb.ServerReflectionRequest(file_containing_symbol="opsd.v1.Settings"))
        files = [descriptor_pb2.FileDescriptorProto.FromString(b)
                 for b in res.file_descriptor_response.file_descriptor_proto]
        methods = sorted(m.name for f in files for s in f.service if s.name == "Settings" for m in s.method)
        expect(methods == ["Delete", "Effective", "Get", "List", "Put", "Watch"],
               "reflection file_containing_symbol(opsd.v1.Settings): methods",
               ["Delete", "Effective", "Get", "List", "Put", "Watch"], methods)
        return f"server reflection ({version}) lists {', '.join(services)} and serves their descriptors"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--addr", required=True, help="the node's client address, HOST:PORT")
    ap.add_argument("--proto-dir", default=os.path.join(REPO, "proto"),
                    help="the directory holding opsd/v1/*.proto (default: the repo's proto/)")
    ap.add_argument("--token-file", help="a file holding the token (default: $OPSD_TOKEN)")
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds for each call (default 15)")
    ap.add_argument("--ca", default=os.environ.get("OPSD_CA"),
                    help="the cluster's ca.pem (default: $OPSD_CA); without it, plaintext")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="opsd-pystubs-") as out:
        current = "generating stubs"
        try:
            mods = generate_stubs(args.proto_dir, out)
            print(f"ok: generated Python stubs for {', '.join(PROTO_FILES)} with grpcio-tools "
                  f"(grpcio {grpc.__version__})", flush=True)
            token = os.environ.get("OPSD_TOKEN", "").strip()
            if args.token_file:
                with open(args.token_file) as f:
                    token = f.read().strip()
            ck = Checker(args.addr, args.timeout, mods, token or None, args.ca)
            checks = [ck.connect, ck.status, ck.put_get, ck.stale_cas, ck.get_missing, ck.empty_key,
                      ck.list_prefix, ck.delete_get, ck.watch, ck.resources_typed, ck.services_api, ck.health,
                      ck.reflection]
            for check in checks:
                current = check.__name__
                print(f"ok: {check()}", flush=True)
        except CheckFailed as err:
            print(f"FAIL [{current}]: {err}", file=sys.stderr, flush=True)
            return 1
        except grpc.RpcError as err:
            print(f"FAIL [{current}]: unexpected gRPC error {err.code().name}: {err.details()}",
                  file=sys.stderr, flush=True)
            return 1
    print(f"all {len(checks)} checks passed against {args.addr}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
