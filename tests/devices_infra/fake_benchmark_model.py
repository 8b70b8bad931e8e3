#!/usr/bin/python3
"""Stand-in for TFLite's ``benchmark_model`` on the fake phone / emulated Pi.

It really loads the .tflite with tflite_runtime (or ai_edge_litert on a
host), runs warm-up and timed invocations and prints what the C++ tool
(tensorflow/lite/tools/benchmark, TF >= 2.15 / LiteRT) prints: INFO/WARN
lines on stdout, ERROR/FATAL on stderr, ``Stat`` lines with p5/median/p95,
``Inference timings in us: ...``, memory footprint lines, exit status 1
with ``ERROR: Benchmarking failed.`` on failure.

Real flags honoured: --graph --num_threads --num_runs --min_secs --max_secs
--warmup_runs --warmup_min_secs --run_delay --use_xnnpack --input_layer
--input_layer_shape --input_layer_value_range --input_layer_value_files
(raw tensor bytes, as in the real tool) --output_filepath (raw bytes of all
output tensors after the last run, concatenated, as the real tool's
OutputSaver writes) --enable_op_profiling --report_peak_memory_footprint
--memory_footprint_check_interval_ms --dry_run --verbose. Other known flags
are accepted and logged; unknown ones give "WARN: Unconsumed cmdline flags".
GPU/NNAPI/Hexagon delegates are not available on the stand-in: asking for
them fails like a phone whose delegate cannot be applied.

Per-op profiling numbers are NOT measured per op (tflite_runtime exposes no
profiler): the table lists the model's real ops and splits the measured
average evenly. Only use it to exercise parsing.
"""

from __future__ import annotations

import math
import os
import resource
import sys
import time

INT, FLOAT, BOOL, STR = "int", "float", "bool", "str"
# (flag, type, default, label) in the order BenchmarkModel/BenchmarkTfLiteModel::LogParams print them.
PARAMS = [
    ("num_runs", INT, 50, "Min num runs"),
    ("min_secs", FLOAT, 1.0, "Min runs duration (seconds)"),
    ("max_secs", FLOAT, 150.0, "Max runs duration (seconds)"),
    ("run_delay", FLOAT, -1.0, "Inter-run delay (seconds)"),
    ("run_frequency", FLOAT, -1.0, "Number of prorated runs per second"),
    ("num_threads", INT, -1, "Num threads"),
    ("use_caching", BOOL, False, "Use caching"),
    ("benchmark_name", STR, "", "Benchmark name"),
    ("output_prefix", STR, "", "Output prefix"),
    ("warmup_runs", INT, 1, "Min warmup runs"),
    ("warmup_min_secs", FLOAT, 0.5, "Min warmup runs duration (seconds)"),
    ("dry_run", BOOL, False, "Run w/o invoking kernels"),
    ("report_peak_memory_footprint", BOOL, False, "Report the peak memory footprint"),
    ("memory_footprint_check_interval_ms", INT, 50, "Memory footprint check interval (ms)"),
    ("graph", STR, "", "Graph"),
    ("signature_to_run_for", STR, "", "Signature to run"),
    ("list_signatures", BOOL, False, "List signatures from the provided model"),
    ("input_layer", STR, "", "Input layers"),
    ("input_layer_shape", STR, "", "Input shapes"),
    ("input_layer_value_range", STR, "", "Input value ranges"),
    ("input_layer_value_files", STR, "", "Input value files"),
    ("allow_fp16", BOOL, False, "Allow fp16"),
    ("require_full_delegation", BOOL, False, "Require full delegation"),
    ("enable_op_profiling", BOOL, False, "Enable op profiling"),
    ("op_profiling_output_mode", STR, "stdout", "Op profiling output mode."),
    ("op_profiling_output_file", STR, "", "Op profiling output file."),
    ("max_profiling_buffer_entries", INT, 1024, "Max initial profiling buffer entries"),
    ("allow_dynamic_profiling_buffer_increase", BOOL, False, "Allow dynamic increase on profiling buffer entries"),
    ("profiling_output_csv_file", STR, "", "CSV File to export profiling data to"),
    ("print_preinvoke_state", BOOL, False, "Print pre-invoke interpreter state"),
    ("print_postinvoke_state", BOOL, False, "Print post-invoke interpreter state"),
    ("release_dynamic_tensors", BOOL, False, "Release dynamic tensor memory"),
    ("optimize_memory_for_large_tensors", INT, 0, "Optimize memory usage for large tensors"),
    ("disable_delegate_clustering", BOOL, False, "Disable delegate clustering"),
    ("enable_builtin_cast_constant_cache", BOOL, False, "Constant CAST output cache"),
    ("output_filepath", STR, "", "File path to export outputs layer to"),
    ("tensor_name_display_length", INT, 25, "Tensor name display length"),
    ("tensor_type_display_length", INT, 15, "Tensor type display length"),
    ("alloc_type_display_length", INT, 18, "Tensor allocation type display length"),
    ("use_xnnpack", BOOL, False, "Use xnnpack"),
    ("xnnpack_force_fp16", BOOL, False, "xnnpack_force_fp16"),
    ("use_gpu", BOOL, False, "Use gpu"),
    ("use_nnapi", BOOL, False, "Use NNAPI"),
    ("use_hexagon", BOOL, False, "Use Hexagon"),
    ("external_delegate_path", STR, "", "External delegate path"),
    ("verbose", BOOL, False, "Log parameter values verbosely"),
    ("help", BOOL, False, "Print usage"),
]
UNAVAILABLE_DELEGATES = {"use_gpu": "GPU", "use_nnapi": "NNAPI", "use_hexagon": "Hexagon"}


class Failed(Exception):
    pass


def info(msg: str) -> None:
    sys.stdout.write(f"INFO: {msg}\n")
    sys.stdout.flush()


def warn(msg: str) -> None:
    sys.stdout.write(f"WARN: {msg}\n")
    sys.stdout.flush()


def error(msg: str) -> None:
    sys.stderr.write(f"ERROR: {msg}\n")
    sys.stderr.flush()


def fatal(msg: str) -> None:
    sys.stdout.flush()
    sys.stderr.write(f"FATAL: {msg}\n")
    sys.stderr.flush()
    os.abort()


def g(x: float) -> str:
    """C++ iostream default formatting of a double (like printf %g)."""
    return format(x, "g")


def parse_flags(argv: list[str]) -> tuple[dict, set, list[str]]:
    types = {name: (typ, default) for name, typ, default, _ in PARAMS}
    values = {name: default for name, (typ, default) in types.items()}
    explicitly_set: set[str] = set()
    unconsumed: list[str] = []
    for arg in argv:
        if not arg.startswith("--"):
            unconsumed.append(arg)
            continue
        name, eq, raw = arg[2:].partition("=")
        if name not in types:
            unconsumed.append(arg)
            continue
        typ, _ = types[name]
        try:
            if typ == BOOL:
                if not eq or raw.lower() in ("true", "1"):
                    value = True
                elif raw.lower() in ("false", "0"):
                    value = False
                else:
                    raise ValueError(raw)
            elif typ == INT:
                value = int(raw)
            elif typ == FLOAT:
                value = float(raw)
            else:
                value = raw
        except ValueError:
            raise Failed(f"Failed to parse flag '{name}' against argument '{arg}'") from None
        values[name] = value
        explicitly_set.add(name)
    return values, explicitly_set, unconsumed


def split_name_and_file(item: str) -> tuple[str, str]:
    """``name:path`` where a ':' inside the name is escaped as '::' (SplitInputLayerNameAndValueFile)."""
    delim = -1
    i = 0
    while i < len(item) - 1:
        if item[i] == ":":
            if item[i + 1] == ":":
                i += 1
            elif delim == -1:
                delim = i
            else:
                error(f"{item} contains more than one delimiter.")
                raise Failed(f"Wrong input value file item specified: {item}")
        i += 1
    if delim == -1:
        error(f"{item} doesn't contain any delimiter.")
        raise Failed(f"Wrong input value file item specified: {item}")
    return item[:delim].replace("::", ":"), item[delim + 1:].replace("::", ":")


def log_params(values: dict, explicitly_set: set) -> None:
    verbose = values["verbose"]
    info(f"Log parameter values verbosely: [{int(verbose)}]")
    for name, typ, _default, label in PARAMS:
        if name in ("verbose", "help"):
            continue
        if name not in explicitly_set and not (verbose or name in ("graph", "signature_to_run_for")):
            continue
        value = values[name]
        shown = int(value) if typ == BOOL else g(value) if typ == FLOAT else value
        info(f"{label}: [{shown}]")


class Stat:
    """tsl::StatWithPercentiles<int64_t>: what benchmark_model prints after each phase."""

    def __init__(self) -> None:
        self.values: list[int] = []

    def add(self, v: int) -> None:
        self.values.append(int(v))

    @property
    def count(self) -> int:
        return len(self.values)

    def avg(self) -> float:
        return sum(self.values) / len(self.values) if self.values else float("nan")

    def first(self) -> int:
        return self.values[0] if self.values else 0

    def std(self) -> int:
        if not self.values or min(self.values) == max(self.values):
            return 0
        n = len(self.values)
        variance = int(sum(v * v for v in self.values) / n - self.avg() ** 2)  # int64 ValueType
        return int(math.sqrt(max(variance, 0)))

    def percentile(self, p: int) -> int:
        ordered = sorted(self.values)
        return ordered[len(ordered) * p // 100]

    def __str__(self) -> str:
        v = self.values
        if not v:
            return "count=0"
        if min(v) == max(v):
            s = f"count={len(v)} curr={v[-1]}" + ("(all same)" if len(v) > 1 else "")
        else:
            s = (f"count={len(v)} first={v[0]} curr={v[-1]} min={min(v)} max={max(v)} "
                 f"avg={g(self.avg())} std={self.std()}")
        return s + f" p5={self.percentile(5)} median={self.percentile(50)} p95={self.percentile(95)}"


def max_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_stats_mb() -> tuple[int, int]:
    try:
        with open("/proc/self/statm") as fh:
            _vsize, rss, shared = (int(x) for x in fh.read().split()[:3])
    except (OSError, ValueError):
        return 0, 0
    page = os.sysconf("SC_PAGE_SIZE")
    return rss * page >> 20, shared * page >> 20


def load_interpreter_module():
    try:
        from tflite_runtime import interpreter as mod  # the device's runtime
    except ImportError:
        try:
            from ai_edge_litert import interpreter as mod  # host fallback
        except ImportError:
            import tensorflow as tf  # last resort
            mod = tf.lite
    return mod


class Benchmark:
    def __init__(self, values: dict, explicitly_set: set):
        self.p = values
        self.set = explicitly_set
        self.it = None
        self.inputs: list = []

    # -- Init(): load model, build interpreter, delegates, allocate
    def init(self) -> None:
        import numpy as np

        mod = load_interpreter_module()
        graph = self.p["graph"]
        if not os.path.isfile(graph):
            error(f"Could not open '{graph}'.")
            raise Failed(f"Failed to load model {graph}")
        with open(graph, "rb") as fh:
            head = fh.read(8)
        if len(head) < 8 or head[4:8] not in (b"TFL3", b"\0\0\0\0"):
            error("The model is not a valid Flatbuffer buffer")
            raise Failed(f"Failed to load model {graph}")
        info(f"Loaded model {graph}")
        kwargs = {}
        if self.p["num_threads"] > 0:
            kwargs["num_threads"] = self.p["num_threads"]
        xnnpack_explicit = "use_xnnpack" in self.set
        if xnnpack_explicit and not self.p["use_xnnpack"]:
            resolver = getattr(mod, "OpResolverType", None)
            if resolver is not None:
                kwargs["experimental_op_resolver_type"] = resolver.BUILTIN_WITHOUT_DEFAULT_DELEGATES
        try:
            self.it = mod.Interpreter(model_path=graph, **kwargs)
        except (ValueError, RuntimeError) as exc:
            error(str(exc).strip())
            raise Failed("Failed to initialize the interpreter") from None
        for flag, name in UNAVAILABLE_DELEGATES.items():
            if self.p[flag]:
                raise Failed(f"Failed to apply {name} delegate.")
        if self.p["external_delegate_path"]:
            raise Failed("Failed to apply External delegate.")
        if xnnpack_explicit and self.p["use_xnnpack"]:
            info("XNNPACK delegate created.")
            info("Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the delegate.")
        details = self.it.get_input_details()
        names = [n for n in self.p["input_layer"].split(",") if n] if self.p["input_layer"] else []
        shapes = [s for s in self.p["input_layer_shape"].split(":") if s] if self.p["input_layer_shape"] else []
        if len(names) != len(shapes):
            raise Failed(
                f"The number of items in --input_layer_shape ({self.p['input_layer_shape']}, with {len(shapes)} items) "
                f"must match the number of items in --input_layer ({self.p['input_layer']}, with {len(names)} items). "
                "For example --input_layer=input1,input2 --input_layer_shape=1,224,224,4:1,20")
        files = {}
        for item in filter(None, self.p["input_layer_value_files"].split(",")):
            name, path = split_name_and_file(item)
            if name not in names:
                fatal(f"Cannot find the corresponding input_layer name({name}) in --input_layer as {self.p['input_layer']}")
            files[name] = path
        ranges = {}
        for item in filter(None, self.p["input_layer_value_range"].split(":")):
            parts = item.split(",")
            if len(parts) != 3:
                raise Failed(f"Wrong input value range item specified: {item}")
            if parts[0] not in names:
                fatal(f"Cannot find the corresponding input_layer name({parts[0]}) in --input_layer as {self.p['input_layer']}")
            ranges[parts[0]] = (int(parts[1]), int(parts[2]))
        if names and len(names) != len(details):
            fatal(f"Inputs mismatch: Model inputs #:{len(names)} expected: {len(details)}")
        for j, name in enumerate(names):
            d = details[j]
            if name != d["name"]:
                warn(f"Tensor # {d['index']} is named {d['name']} but flags call it {name}")
            shape = [int(x) for x in shapes[j].split(",")]
            if -1 in shape:
                raise Failed("Any unknown sizes in the shapes (-1's) must be replaced with the size you want to benchmark with.")
            if len(shape) != len(d["shape"]):
                raise Failed(f"Input tensor #{d['index']} should have {len(d['shape'])} dimensions!")
            self.it.resize_tensor_input(d["index"], shape)
        try:
            self.it.allocate_tensors()
        except RuntimeError as exc:
            error(str(exc).strip())
            raise Failed("Failed to allocate tensors!") from None
        rng = np.random.default_rng()
        for j, d in enumerate(self.it.get_input_details()):
            name = names[j] if j < len(names) else None
            shape, dtype = tuple(d["shape"]), np.dtype(d["dtype"])
            nbytes = int(np.prod(shape)) * dtype.itemsize
            if name in files:
                path = files[name]
                if not os.path.isfile(path):
                    fatal(f"Failed to read the input_layer_value_file:{path}")
                size = os.path.getsize(path)
                if size != nbytes:
                    fatal(f"The size of {path} is {size} bytes. It should be {nbytes} bytes.")
                with open(path, "rb") as fh:
                    data = np.frombuffer(fh.read(), dtype=dtype).reshape(shape)
            elif np.issubdtype(dtype, np.integer):
                lo, hi = ranges.get(name, (np.iinfo(dtype).min, np.iinfo(dtype).max))
                data = rng.integers(lo, hi, size=shape, endpoint=True).astype(dtype)
            elif dtype == np.bool_:
                data = rng.integers(0, 1, size=shape, endpoint=True).astype(dtype)
            else:
                data = rng.uniform(-0.5, 0.5, size=shape).astype(dtype)
            self.inputs.append((d["index"], data))

    def run_once(self) -> None:
        for index, data in self.inputs:
            self.it.set_tensor(index, data)
        if not self.p["dry_run"]:
            self.it.invoke()

    def run_phase(self, min_runs: int, min_secs: float, max_secs: float) -> Stat:
        info(f"Running benchmark for at least {min_runs} iterations and at least {g(min_secs)} seconds "
             f"but terminate if exceeding {g(max_secs)} seconds.")
        stat = Stat()
        now = time.monotonic()
        min_finish, max_finish = now + min_secs, now + max_secs
        delay = self.p["run_delay"]
        run = 0
        while (run < min_runs or now < min_finish) and now <= max_finish:
            start = time.perf_counter()
            self.run_once()
            stat.add(int((time.perf_counter() - start) * 1e6))
            if delay > 0:
                time.sleep(delay)
            now = time.monotonic()
            run += 1
        sys.stdout.write(f"INFO: {stat}\n\n")
        sys.stdout.flush()
        return stat

    def op_profile(self, inference: Stat) -> None:
        try:
            ops = self.it._get_ops_details()
        except Exception:
            ops = []
        if not ops:
            return
        share = inference.avg() / 1000.0 / len(ops)
        rows, cdf = [], 0.0
        header = ("\t                             [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t"
                  "  [mem KB]\t[times called]\t[Name]")
        for op in ops:
            pct = 100.0 / len(ops)
            cdf += pct
            rows.append(f"\t{op['op_name']:>40}\t{share:9.3f}\t{share:9.3f}\t{pct:7.3f}%\t{cdf:7.3f}%\t"
                        f"{0.0:10.3f}\t{1:9d}\t[{op.get('op_name', '')}]:{op['index']}")
        body = "\n".join(["============================== Run Order ==============================", header, *rows, "",
                          "============================== Top by Computation Time ==============================",
                          header, *rows[:10], "", f"Number of nodes executed: {len(ops)}",
                          f"Timings (microseconds): {Stat.__str__(inference).split(' p5=')[0]}",
                          "Memory (bytes): count=0", f"{len(ops)} nodes observed", ""])
        sys.stdout.write("INFO: Operator-wise Profiling Info for Regular Benchmark Runs:\n" + body + "\n")
        sys.stdout.flush()

    def run(self) -> None:
        if self.p["dry_run"]:
            for k in ("warmup_runs", "num_runs"):
                self.p[k] = 0
            self.p["warmup_min_secs"] = self.p["min_secs"] = -1.0
        graph = self.p["graph"]
        size_mb = os.path.getsize(graph) / 1e6 if os.path.isfile(graph) else -1
        start_rss = max_rss_kb()
        t0 = time.perf_counter()
        self.init()
        init_rss = max_rss_kb()
        init_us = int((time.perf_counter() - t0) * 1e6)
        if size_mb > 0:
            info(f"The input model file size (MB): {g(size_mb)}")
        else:
            warn("Failed to get the input model file size.")
        info(f"Initialized session in {g(init_us / 1e3)}ms.")
        warmup = self.run_phase(self.p["warmup_runs"], self.p["warmup_min_secs"], self.p["max_secs"])
        inference = self.run_phase(self.p["num_runs"], self.p["min_secs"], self.p["max_secs"])
        end_rss = max_rss_kb()
        info(f"Inference timings in us: Init: {init_us}, First inference: {warmup.first()}, "
             f"Warmup (avg): {g(warmup.avg())}, Inference (avg): {g(inference.avg())}")
        info("Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the "
             "actual memory footprint of the model at runtime. Take the information at your discretion.")
        info(f"Memory footprint delta from the start of the tool (MB): init={g((init_rss - start_rss) / 1024.0)} "
             f"overall={g((end_rss - start_rss) / 1024.0)}")
        if self.p["report_peak_memory_footprint"]:
            info(f"Overall peak memory footprint (MB) via periodic monitoring: {g(end_rss / 1024.0)}")
            rss, shared = rss_stats_mb()
            info("Memory status at the end of exeution:")
            info(f"- VmRSS              : {rss} MB")
            info(f"+ RssAnnon           : {rss - shared} MB")
            info(f"+ RssFile + RssShmem : {shared} MB")
        if self.p["enable_op_profiling"]:
            self.op_profile(inference)
        out = self.p["output_filepath"]
        if out:
            with open(out, "wb") as fh:
                for d in self.it.get_output_details():
                    fh.write(self.it.get_tensor(d["index"]).tobytes())


def main(argv: list[str]) -> int:
    info("STARTING!")
    try:
        values, explicitly_set, unconsumed = parse_flags(argv)
        if values["help"]:
            sys.stderr.write("usage: benchmark_model --graph=model.tflite [--num_threads=N] [--num_runs=N] ...\n")
            raise Failed("Print usage")
        if unconsumed:
            warn("Unconsumed cmdline flags: " + " ".join(unconsumed))
        log_params(values, explicitly_set)
        if not values["graph"]:
            raise Failed("Please specify the name of your TF Lite input file with --graph")
        Benchmark(values, explicitly_set).run()
    except Failed as exc:
        error(str(exc))
        error("Benchmarking failed.")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
