"""The svlm lifecycle node: camera images in, svlm_ros/Description for every second out."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.lifecycle import LifecycleNode, LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn
from rclpy.node import Node
from rclpy.parameter_service import ParameterService
from rclpy.serialization import deserialize_message
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from svlm_ros.msg import Description
from svlm_ros.srv import Ask, Recall

from ..engine.models import RANDOM_MODELS, load_model
from ..params import AT_START, RUNTIME, build_configs, defaults
from .parameters import descriptor
from ..sources.bags import peek_header
from ..sources.images import BadImage
from .memory import NodeMemory, to_entry_msg
from ..sources.intake import FrameWarning
from ..cameras.scheduler import Described, Scheduler
from .stamps import to_seconds, to_time_msg

COMPRESSED_SUFFIX = "/compressed"  # the image_transport convention
THROTTLE_S = 5.0
# Seconds deactivate waits for the worker to finish its window before giving up on it.
STOP_TIMEOUT_S = 30.0
# Cleanup polls the worker this often, so that a shutdown arriving meanwhile takes over at once.
STOP_POLL_S = 0.1
# Seconds cleanup gives the memory to write what is queued; a shutdown gives what its deadline leaves.
MEMORY_CLOSE_TIMEOUT_S = 10.0
# Of a shutdown's deadline, the part kept for closing the memory (the worker gets the rest).
MEMORY_CLOSE_RESERVE_S = 1.0
# Image callbacks receive the serialized message and read the stamp first: frames the sampler
# does not need (four in five from a 10-Hz camera at 2 fps) are never deserialized.
# docs/benchmarks.md ("Frames heard") has the measurement.
RAW_SUBSCRIPTIONS = True


class _Interrupted(Exception):
    """A configure stopped by the shutdown (Ctrl-C, SIGTERM): expected, so not logged as a failure."""


@dataclass
class ShutdownReport:
    memory: str  # the memory's part of the last log line
    abandoned: List[str]  # what had not finished by the deadline: the process leaves without it


class _RosLogHandler(logging.Handler):
    """Forwards the engine's and scheduler's Python log records to the node's logger, so they reach /rosout."""

    def __init__(self, node: Node):
        super().__init__(logging.INFO)
        self._logger = node.get_logger()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
            if record.exc_info and record.exc_info[1] is not None:
                text += f": {type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
            if record.levelno >= logging.ERROR:
                self._logger.error(text)
            elif record.levelno >= logging.WARNING:
                self._logger.warning(text)
            elif record.levelno >= logging.INFO:
                self._logger.info(text)
            else:
                self._logger.debug(text)
        except Exception:  # noqa: BLE001 - logging must never raise (e.g. after the context shut down)
            self.handleError(record)


class SvlmNode(LifecycleNode):
    def __init__(self, node_name: str = "svlm", **kwargs):
        # Lifecycle and parameter services get callback groups of their own (rclpy puts them all in
        # the node's default group): `ros2 param get` must answer while `configure` loads a model.
        self._lifecycle_group = MutuallyExclusiveCallbackGroup()
        self._parameter_group = MutuallyExclusiveCallbackGroup()
        Node.__init__(self, node_name, start_parameter_services=False, **kwargs)
        default_group, self._default_callback_group = self._default_callback_group, self._parameter_group
        try:  # ParameterService takes no group: it uses the default one, swapped for the moment
            self._parameter_service = ParameterService(self)
        finally:
            self._default_callback_group = default_group
        LifecycleNodeMixin.__init__(self, enable_communication_interface=True, callback_group=self._lifecycle_group)
        self._log_handler = _RosLogHandler(self)
        package_logger = logging.getLogger("svlm_ros")
        package_logger.addHandler(self._log_handler)
        if package_logger.level == logging.NOTSET or package_logger.level > logging.INFO:
            package_logger.setLevel(logging.INFO)
        package_logger.propagate = False  # printed once, by rclpy, and sent to /rosout
        self._values = defaults()
        for name, value in self._values.items():
            self.declare_parameter(name, value, descriptor(name, value))
        self._values = {name: self.get_parameter(name).value for name in self._values}
        # Built once here and on every accepted change; a bad launch-time value stops the node early.
        self._configs = build_configs(self._values)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.loaded = None
        self.scheduler: Optional[Scheduler] = None
        self.memory: Optional[NodeMemory] = None
        self.model_error: Optional[str] = None
        self.model_status = "not loaded"
        self._image_subscriptions = []
        self._description_pub = self._text_pub = None
        self._svlm_services = []
        self._describing = False
        self._publish_lock = threading.Lock()
        self._release_lock = threading.RLock()
        self._abort = threading.Event()  # set by main on Ctrl-C: a configure in progress stops early
        self._closed = False  # shut_down() ran: a configure still in progress leaves everything alone
        self._configuring = False
        self.loading_model = False  # inside load_model, which cannot be cut short
        self._calls_done = threading.Condition()  # notified as each service call is answered
        self._calls_in_flight = 0  # service calls being answered, for the shutdown
        self._throttle: Dict[Tuple[str, str], list] = {}
        self._service_group = ReentrantCallbackGroup()
        self._diagnostics_group = MutuallyExclusiveCallbackGroup()
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = None
        self._start_diagnostics_timer()

    def _start_diagnostics_timer(self) -> None:
        # Wall (steady) time: diagnostics must flow with use_sim_time and no /clock, and after a bag ends.
        if self._diagnostics_timer is not None:
            self.destroy_timer(self._diagnostics_timer)
        self._diagnostics_timer = self.create_timer(self.node_config.diagnostics_period_s, self._publish_diagnostics,
                                                    callback_group=self._diagnostics_group,
                                                    clock=Clock(clock_type=ClockType.STEADY_TIME))

    # ----- configuration ----------------------------------------------------------------------
    @property
    def configs(self):
        return self._configs

    @property
    def node_config(self):
        return self._configs[2]

    def _on_set_parameters(self, params) -> SetParametersResult:
        try:
            return self._set_parameters(params)
        except Exception as error:  # noqa: BLE001 - an exception here would end the executor's spin
            self.get_logger().error(f"applying the parameter change {sorted(p.name for p in params)} failed: "
                                    f"{type(error).__name__}: {error}; the node goes on (please report this)")
            return SetParametersResult(successful=False, reason=f"{type(error).__name__}: {error}")

    def _set_parameters(self, params) -> SetParametersResult:
        # use_sim_time and other rclpy parameters are not ours to check.
        changes = {p.name: p.value for p in params if p.name in self._values}
        if not changes:
            return SetParametersResult(successful=True)
        try:
            configs = build_configs({**self._values, **changes})
        except (ValueError, TypeError) as error:
            self.get_logger().warning(f"refused parameter change {sorted(changes)}: {error}")
            return SetParametersResult(successful=False, reason=str(error))
        self._values.update(changes)
        self._configs = configs
        if "prompt.instruction" in changes and self.scheduler is not None:
            self.scheduler.set_instruction(changes["prompt.instruction"])
            self.get_logger().info(f"standing instruction is now {changes['prompt.instruction']!r}")
        if self.scheduler is not None:
            self.scheduler.node_config = self.node_config
            self.scheduler.notify()  # a batch waiting for stragglers reads batch_wait_s and max_batch again
        if self.memory is not None:
            self.memory.update_config(self.node_config.memory)
        if "diagnostics_period_s" in changes:
            self._start_diagnostics_timer()
            self.get_logger().info(f"diagnostics every {self.node_config.diagnostics_period_s} s")
        at_start = sorted(set(changes) & AT_START)
        if at_start:
            self.get_logger().warning(f"{at_start} changed, but is only read when the node starts: deferred to the "
                                      "next start of the node")
        deferred = sorted(set(changes) - RUNTIME - AT_START)
        if deferred and self.scheduler is None and not self._configuring:
            self.get_logger().info(f"{deferred} set: used by the next configure")
        elif deferred:
            self.get_logger().warning(f"{deferred} changed, but the configured model keeps the old value until the "
                                      "next configure: deactivate, cleanup, configure and activate to apply it")
        return SetParametersResult(successful=True)

    def abort_startup(self) -> None:
        """Ctrl-C: a configure in progress stops at its next step (a model load itself cannot be cut short)."""
        self._abort.set()

    @property
    def shutting_down(self) -> bool:
        return self._abort.is_set()

    @property
    def configuring(self) -> bool:
        return self._configuring

    def release(self) -> None:
        """Stop the worker and drop the model, whatever the lifecycle state; safe to call again.

        The scheduler and the memory stay until the worker has stopped: the window in hand is still
        published and reaches the memory. A shutdown arriving meanwhile takes over (shut_down)."""
        with self._release_lock:
            self._describing = False
            scheduler = self.scheduler
            if scheduler is not None:
                # A worker inside torch when the interpreter exits aborts the process: wait for it.
                started, warned = time.monotonic(), False
                while not scheduler.stop(STOP_POLL_S):
                    if self._abort.is_set():
                        return
                    if not warned and time.monotonic() - started > STOP_TIMEOUT_S:
                        warned = True
                        self.get_logger().warning(f"the inference worker is still inside "
                                                  f"{scheduler.busy_with or 'its work'} after {STOP_TIMEOUT_S:.0f} s; "
                                                  "waiting for it to finish")
            self.scheduler = None
            memory, self.memory = self.memory, None
            if memory is not None:
                not_written = memory.close(MEMORY_CLOSE_TIMEOUT_S)
                if not_written:
                    self.get_logger().warning(
                        f"memory: {not_written} queued entries could not be written within "
                        f"{MEMORY_CLOSE_TIMEOUT_S:.0f} s and are lost (diagnostics memory_write_errors say why)")
            self.loaded = None

    def shut_down(self, deadline: float) -> ShutdownReport:
        """Ctrl-C or SIGTERM, in any lifecycle state, by `deadline` (time.monotonic()).

        The worker stops after the window, question or summary in hand (a window still reaches the
        memory), questions still waiting are answered with the reason, and the memory writes what
        is queued and closes; what has not finished by the deadline is named in the report. Called
        while the ROS context is valid, so all of it can be logged."""
        self._abort.set()
        self._describing = False
        if not self._release_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
            return ShutdownReport("left to the lifecycle transition in progress", ["a lifecycle transition"])
        abandoned = []
        try:
            scheduler = self.scheduler
            if scheduler is not None:
                doing = scheduler.busy_with
                if not scheduler.stop(max(0.0, deadline - MEMORY_CLOSE_RESERVE_S - time.monotonic())):
                    abandoned.append(f"the inference worker (inside {scheduler.busy_with or doing or 'its work'})")
            memory, self.memory = self.memory, None
            memory_report = self._close_memory(memory, max(0.5, deadline - time.monotonic()))
            if not abandoned:
                self.scheduler = self.loaded = None
            self._closed = True
        finally:
            self._release_lock.release()
        # Answers already on their way (none can come while the worker they wait for is still busy).
        if not abandoned:
            with self._calls_done:
                self._calls_done.wait_for(lambda: not self._calls_in_flight, max(0.0, deadline - time.monotonic()))
        if self._calls_in_flight:
            abandoned.append(f"{self._calls_in_flight} service call(s) in progress")
        if self._configuring:
            abandoned.append("the model load in progress" if self.loading_model else "the configure in progress")
        return ShutdownReport(memory_report, abandoned)

    def _close_memory(self, memory: Optional[NodeMemory], timeout: float) -> str:
        if memory is None:
            return "not open" if self.node_config.memory.enabled else "off"
        writer = memory.writer
        not_written = memory.close(timeout)
        if writer is None:
            return f"unavailable ({memory.error})"
        report = f"{writer.written} entries committed, {not_written} queued entries not written"
        if writer.dropped:
            report += f", {writer.dropped} dropped earlier when the queue was full"
        if writer.lost:
            report += f", {writer.lost} lost earlier to store errors"
        return report

    def destroy_node(self) -> None:
        logging.getLogger("svlm_ros").removeHandler(self._log_handler)
        if not logging.getLogger("svlm_ros").handlers:
            logging.getLogger("svlm_ros").propagate = True
        super().destroy_node()

    # ----- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        model_config, engine_config, node_config = self.configs
        self._configuring = True
        try:
            return self._configure(model_config, engine_config, node_config, state)
        except _Interrupted as interruption:
            with self._release_lock:  # not while shut_down closes things, nor after it (the node goes away)
                if not self._closed:
                    self.get_logger().info(f"configure interrupted {interruption}: shutting down")
                    self._undo_configure()
            self.model_status = "not loaded"
            return TransitionCallbackReturn.FAILURE
        except Exception as error:  # rclpy would swallow it without a log line
            self.model_error = f"configure failed after loading {model_config.model!r}: {type(error).__name__}: {error}"
            self.model_status = "failed"
            self.get_logger().error(self.model_error)
            self._undo_configure()
            return TransitionCallbackReturn.FAILURE
        finally:
            self._configuring = False

    def _check_abort(self, where: str) -> None:
        if self._abort.is_set():
            raise _Interrupted(where)

    def _configure(self, model_config, engine_config, node_config, state) -> TransitionCallbackReturn:
        self.model_status = f"loading {model_config.model}"
        self.get_logger().info(f"loading model {model_config.model!r} on {model_config.device}")
        self.loading_model = True
        try:
            loaded = load_model(model_config)
        except Exception as error:
            if self._abort.is_set():
                raise _Interrupted("while the model loaded") from error
            self.model_error = f"model {model_config.model!r} failed to load: {error}"
            self.model_status = "failed"
            self.get_logger().error(self.model_error)
            return TransitionCallbackReturn.FAILURE
        finally:
            self.loading_model = False
        # Each step that starts something runs under the release lock and checks for a shutdown
        # inside it: either the shutdown finds the step done and undoes it, or the step never starts.
        with self._release_lock:
            self._check_abort("after the model loaded")
            self.loaded = loaded
            self.model_error = None
            self.model_status = f"loaded {loaded.name} on {loaded.device} ({loaded.dtype})"
            self.scheduler = Scheduler(loaded, engine_config, node_config, self._publish, node_config.image_topics)
        if model_config.model in RANDOM_MODELS:
            self.get_logger().warning(f"{model_config.model} has random weights: its descriptions are meaningless "
                                      "words. Set the parameter `model` to a StreamingVLM checkpoint directory.")
        if node_config.warm_up and not self._warm_up():
            return TransitionCallbackReturn.FAILURE
        with self._release_lock:
            self._check_abort("after the warm-up")
            if node_config.memory.enabled:
                self.memory = NodeMemory(self, node_config.memory, self.loaded, engine_config, self.scheduler)
                if node_config.memory.resume_context:
                    self._resume_context()
            self._description_pub = self.create_lifecycle_publisher(Description, "~/description", 10)
            self._text_pub = self.create_lifecycle_publisher(String, "~/text", 10)
            self._svlm_services = [
                self.create_service(Ask, "~/ask", self._guarded("~/ask", self._on_ask),
                                    callback_group=self._service_group),
                self.create_service(Trigger, "~/reset", self._guarded("~/reset", self._on_reset),
                                    callback_group=self._service_group),
                self.create_service(Recall, "~/recall", self._guarded("~/recall", self._on_recall),
                                    callback_group=self._service_group),
            ]
        self.get_logger().info("configured")
        return super().on_configure(state)

    def _undo_configure(self) -> None:
        for service in self._svlm_services:
            self.destroy_service(service)
        self._svlm_services = []
        self._describing = False
        with self._publish_lock:
            for publisher in (self._description_pub, self._text_pub):
                if publisher is not None:
                    self.destroy_lifecycle_publisher(publisher)
            self._description_pub = self._text_pub = None
        self.release()

    def _warm_up(self) -> bool:
        """One blank window for every camera, in one batched step, so the first real window is not the slow one."""
        self.get_logger().info("warming up")
        self._check_abort("during the warm-up")
        cameras = list(self.scheduler.cameras)
        try:
            seconds = self.scheduler.warm_up()
        except Exception as error:
            self.model_error = (f"model {self.loaded.name!r} failed its warm-up window for {', '.join(cameras)}: "
                                f"{error}; set warm_up:=false to skip the warm-up, or fix the model settings")
            self.model_status = "failed"
            self.get_logger().error(self.model_error)
            self.release()
            return False
        mode = self.scheduler.batch.streams[0].decode_mode
        self.get_logger().info(f"warmed up {len(cameras)} camera(s) in one batched step in {seconds:.2f} s "
                               f"({mode} decoding)")
        return True

    def _resume_context(self) -> None:
        """Each camera's stream starts from its latest summaries (memory.resume_context)."""
        for name, stream in self.scheduler.cameras.items():
            seed = self.memory.seed(name)
            if not seed:
                self.get_logger().info(f"{name}: no summaries in the memory yet; starting without previous text")
                continue
            context = stream.session.config.prompt.context
            stream.session.set_context(f"{context}\n{seed}" if context else seed)
            stream.session.reset()
            self.get_logger().info(f"{name}: resumed from the memory's latest summaries "
                                   f"({self.memory.count_tokens(seed)} tokens of previous text)")

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        node_config = self.node_config
        with self._release_lock:
            if self._abort.is_set():  # the shutdown began: nothing starts any more
                return TransitionCallbackReturn.FAILURE
            try:
                self.scheduler.start(wait_s=STOP_TIMEOUT_S)
            except RuntimeError as error:
                self.get_logger().error(f"cannot activate: {error}")
                return TransitionCallbackReturn.FAILURE
        reliability = ReliabilityPolicy.RELIABLE if node_config.reliable_qos else qos_profile_sensor_data.reliability
        qos = QoSProfile(depth=node_config.qos_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST,
                         durability=qos_profile_sensor_data.durability)
        for topic in node_config.image_topics:
            message_type = CompressedImage if topic.endswith(COMPRESSED_SUFFIX) else Image
            # One group per camera: a multi-threaded executor runs one topic's callbacks one at a
            # time, in arrival order (a shared reentrant group let frames overtake each other and
            # in-order frames were dropped as late); different cameras still run in parallel.
            if RAW_SUBSCRIPTIONS:
                callback = (lambda data, topic=topic, kind=message_type: self._on_serialized(topic, kind, data))
            else:
                callback = (lambda msg, topic=topic: self._on_image(topic, msg))
            self._image_subscriptions.append(self.create_subscription(
                message_type, topic, callback, qos, callback_group=MutuallyExclusiveCallbackGroup(),
                raw=RAW_SUBSCRIPTIONS))
        self._describing = True
        self.get_logger().info(f"describing {node_config.image_topics} on {self.resolve_topic_name('~/description')}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._describing = False
        for subscription in self._image_subscriptions:
            self.destroy_subscription(subscription)
        self._image_subscriptions = []
        if self.scheduler is not None and not self.scheduler.stop(STOP_TIMEOUT_S):
            self.get_logger().warning(f"the inference worker is still inside {self.scheduler.busy_with or 'its work'} "
                                      f"after {STOP_TIMEOUT_S:.0f} s; it stops when that ends, and the next "
                                      "activation waits for it")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._undo_configure()
        self.model_status = "not loaded"
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._describing:
            self.on_deactivate(state)
        if self.scheduler is not None or self._svlm_services:
            self.on_cleanup(state)
        return super().on_shutdown(state)

    # ----- data path --------------------------------------------------------------------------
    def _on_serialized(self, topic: str, kind, data: bytes) -> None:
        try:
            self._take_serialized(topic, kind, data)
        except Exception as error:  # noqa: BLE001 - an exception here would end the executor's spin
            self._frame_callback_failed(topic, error)

    def _on_image(self, topic: str, msg) -> None:
        try:
            self._take_image(topic, msg)
        except Exception as error:  # noqa: BLE001 - an exception here would end the executor's spin
            self._frame_callback_failed(topic, error)

    def _frame_callback_failed(self, topic: str, error: Exception) -> None:
        self._warn(topic, FrameWarning(f"the image callback failed ({type(error).__name__}: {error}); frame dropped, "
                                       "the node goes on (please report this with the log)", "callback_error"),
                   error=True)

    def _take_serialized(self, topic: str, kind, data: bytes) -> None:
        scheduler = self.scheduler
        stream = scheduler.cameras.get(topic) if scheduler else None
        if not self._describing or stream is None:
            return
        try:
            stamp, frame_id = peek_header(data)
        except BadImage as error:
            self._warn(topic, FrameWarning(f"{error}; frame dropped", error.cause))
            return
        if frame_id:
            stream.frame_id = frame_id

        def load():
            try:
                return deserialize_message(data, kind)
            except Exception as error:  # noqa: BLE001 - a malformed message is a bad frame, not a crash
                raise BadImage(f"cannot deserialize the {kind.__name__} message: {error}", "malformed_raw") from error

        for warning in stream.feed_lazy(stamp, load):
            self._warn(topic, warning)
        scheduler.notify()

    def _take_image(self, topic: str, msg) -> None:
        scheduler = self.scheduler
        stream = scheduler.cameras.get(topic) if scheduler else None
        if not self._describing or stream is None:
            return
        stamp = to_seconds(msg.header.stamp)
        stream.frame_id = msg.header.frame_id
        for warning in stream.feed(stamp, msg):
            self._warn(topic, warning)
        scheduler.notify()

    def _warn(self, camera: str, warning: str, error: bool = False) -> None:
        """A warning throttled per (camera, kind): one camera's repeated warning must not hide another's."""
        key = (camera, getattr(warning, "kind", "other"))
        now = time.monotonic()
        entry = self._throttle.setdefault(key, [float("-inf"), 0])
        if now - entry[0] < THROTTLE_S:
            entry[1] += 1
            return
        suppressed = f" ({entry[1]} more like it in the last {THROTTLE_S:.0f} s)" if entry[1] else ""
        self._throttle[key] = [now, 0]
        if error:  # two call sites: rclpy's logger fixes a call site's severity at its first call
            self.get_logger().error(f"{camera}: {warning}{suppressed}")
        else:
            self.get_logger().warning(f"{camera}: {warning}{suppressed}")

    def _publish(self, described: Described) -> None:
        result, window = described.result, described.window
        if not (result.silent and not self.node_config.publish_silent):
            self._publish_description(described)
        memory = self.memory
        if memory is not None:  # every window, silent ones too: the memory knows when nothing happened
            memory.record(described.camera, window.start_s, window.end_s, result.text, result.silent)

    def _publish_description(self, described: Described) -> None:
        result, window = described.result, described.window
        node_config = self.node_config
        msg = Description()
        msg.header.stamp = to_time_msg(window.end_s)
        msg.header.frame_id = described.frame_id
        msg.window_start = to_time_msg(window.start_s)
        msg.window_end = to_time_msg(window.end_s)
        msg.camera = described.camera
        msg.text = result.text
        msg.silent = result.silent
        msg.index = result.index
        msg.latency = float(described.latency_s)
        msg.generated_tokens = result.generated_tokens
        msg.cache_tokens = result.cache_tokens
        with self._publish_lock:  # deactivate and cleanup destroy the publishers from another thread
            if self._description_pub is not None and self._describing:
                self._description_pub.publish(msg)
                if node_config.publish_text and self._text_pub is not None and not result.silent:
                    self._text_pub.publish(String(data=result.text))

    # ----- services ---------------------------------------------------------------------------
    def _guarded(self, name: str, handler):
        """A service callback that cannot end the node: an exception is logged and answered success=false."""
        def serve(request, response):
            with self._calls_done:
                self._calls_in_flight += 1
            try:
                return handler(request, response)
            except Exception as error:  # noqa: BLE001 - an exception here would end the executor's spin
                self.get_logger().error(f"{name} failed: {type(error).__name__}: {error}; answered success=false, "
                                        "the node goes on (if it repeats, please report it with this log)")
                response.success = False
                response.message = f"{name} failed inside the node: {type(error).__name__}: {error}"
                return response
            finally:
                with self._calls_done:
                    self._calls_in_flight -= 1
                    self._calls_done.notify_all()
        return serve

    def _on_ask(self, request, response):
        response.success = False
        scheduler = self.scheduler
        if scheduler is None or not self._describing:
            response.message = "the node is not active (model not loaded or deactivated)"
            return response
        cameras = list(scheduler.cameras)
        camera = request.camera or cameras[0]
        if camera not in scheduler.cameras:
            response.message = f"unknown camera {camera!r}; cameras: {cameras}"
            return response
        stream = scheduler.cameras[camera]
        if stream.last_result is None:
            response.message = f"no video from {camera} yet"
            return response
        self.get_logger().info(f"~/ask about {camera}: {request.question!r}")
        recollection, note = None, ""
        memory = self.memory
        if memory is not None and self.node_config.memory.ask_entries > 0:
            recollection, note = memory.recollect(request.question, stream.last_result.end_s)
        future = scheduler.ask(camera, request.question, recollection.lines if recollection else ())
        try:
            answer = future.result(timeout=self.node_config.ask_timeout_s)
        except TimeoutError:
            future.cancel()
            response.message = f"no answer within ask_timeout_s={self.node_config.ask_timeout_s}"
            return response
        except Exception as error:
            response.message = f"the question failed: {error}"
            return response
        response.success = True
        response.answer = answer.text
        response.stamp = to_time_msg(answer.end_s)
        response.message = note
        if recollection is not None:
            response.sources = [to_entry_msg(source) for source in recollection.sources]
        return response

    def _on_recall(self, request, response):
        memory = self.memory
        if memory is None:
            response.success = False
            response.message = ("the long-term memory is off (memory.enabled is false)" if self.scheduler is not None
                                else "the node is not configured")
            return response
        response.success, response.message, response.entries = memory.recall(request)
        return response

    def _on_reset(self, request, response):
        scheduler = self.scheduler
        if scheduler is None:
            response.success, response.message = False, "the node is not configured"
            return response
        scheduler.reset()
        response.success, response.message = True, "every camera starts a fresh stream with its next frame"
        return response

    # ----- diagnostics ------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        try:
            self._diagnose()
        except Exception as error:  # noqa: BLE001 - an exception here would end the executor's spin
            self._warn("diagnostics", FrameWarning(f"composing the diagnostics failed ({type(error).__name__}: "
                                                   f"{error}); the node goes on (please report this)", "diagnostics"),
                       error=True)

    def _diagnose(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        model = DiagnosticStatus(name=f"{self.get_name()}: model", hardware_id=self.get_name())
        if self.model_error:
            model.level, model.message = DiagnosticStatus.ERROR, self.model_error
        else:
            model.level, model.message = DiagnosticStatus.OK, self.model_status
        model.values = [KeyValue(key="accelerator_memory_bytes", value=str(_accelerator_memory()))]
        scheduler = self.scheduler
        if scheduler is not None:
            if scheduler.running and scheduler.ensure_worker():
                model.level = DiagnosticStatus.ERROR
                model.message = f"the inference worker died and was restarted: {scheduler.last_error}"
            model.values += [KeyValue(key="worker_alive", value=str(scheduler.worker_alive())),
                             KeyValue(key="worker_restarts", value=str(scheduler.worker_restarts)),
                             KeyValue(key="publish_errors", value=str(scheduler.publish_errors)),
                             KeyValue(key="worker_busy_with", value=scheduler.busy_with),
                             KeyValue(key="background_jobs_waiting", value=str(scheduler.idle_jobs_waiting))]
            model.values += [KeyValue(key=k, value=v) for k, v in scheduler.batches.values().items()]
            if scheduler.last_error:
                model.values.append(KeyValue(key="last_window_error", value=scheduler.last_error))
        array.status.append(model)
        memory = self.memory
        if memory is not None:
            status = DiagnosticStatus(name=f"{self.get_name()}: memory", hardware_id=self.get_name())
            problem = memory.problem()
            if problem:
                status.level, status.message = DiagnosticStatus.ERROR, problem
            elif memory.summaries_behind or (memory.writer is not None and memory.writer.dropped):
                status.level = DiagnosticStatus.WARN
                status.message = "falling behind: summaries waiting for an idle model, or writes dropped"
            elif memory.moved_aside is not None:
                status.level = DiagnosticStatus.WARN
                status.message = (f"remembering in a new store: the corrupt file found at configure was moved aside to "
                                  f"{memory.moved_aside} (sqlite3 OLD .recover may save what it held)")
            else:
                status.level, status.message = DiagnosticStatus.OK, "remembering"
            status.values = [KeyValue(key=k, value=str(v)) for k, v in memory.status_values().items()]
            array.status.append(status)
        if scheduler is not None:
            for name, stream in scheduler.cameras.items():
                array.status.append(self._camera_status(name, stream))
        try:
            self._diagnostics_pub.publish(array)
        except Exception:  # noqa: BLE001 - the context is shutting down (Ctrl-C)
            pass

    def _camera_status(self, name, stream) -> DiagnosticStatus:
        stats = stream.stats
        latencies = sorted(stats.latencies)
        p50 = latencies[len(latencies) // 2] if latencies else 0.0
        p95 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.95))] if latencies else 0.0
        window = stream.session.config.frames.window_seconds
        real_time_factor = window / p50 if p50 else 0.0
        status = DiagnosticStatus(name=f"{self.get_name()}: camera {name}", hardware_id=name)
        status.level, status.message = DiagnosticStatus.OK, "describing"
        silent_for = None if stats.last_frame_wall is None else time.monotonic() - stats.last_frame_wall
        if stats.last_frame_wall is None:
            status.level, status.message = DiagnosticStatus.WARN, "no frame received yet"
        elif silent_for > self.node_config.camera_timeout_s:
            status.level, status.message = DiagnosticStatus.WARN, f"no frame for {silent_for:.1f} s"
        elif stats.stamp_problem:
            status.level = DiagnosticStatus.WARN
            status.message = (f"{stats.stamp_problem}: the camera driver does not stamp its frames, so no window "
                              "can be cut; fix header.stamp in the driver")
        elif p50 > window:
            status.level, status.message = DiagnosticStatus.WARN, "behind real time: skipping windows"
        values = {
            "real_time_factor": f"{real_time_factor:.2f}", "latency_p50_s": f"{p50:.3f}",
            "latency_p95_s": f"{p95:.3f}", "processed_windows": stats.processed_windows,
            "skipped_windows": stats.skipped_windows, "empty_windows": stats.empty_windows,
            "failed_windows": stats.failed_windows, "frames": stats.frames, "late_frames": stats.late_frames,
            "bad_frames": stats.bad_frames, "stream_restarts": stats.restarts,
            "forward_jumps": stats.forward_jumps, "unconverted_frames": stats.unconverted_frames,
            "zero_stamps": stats.zero_stamps, "repeated_stamps": stats.repeated_stamps,
            "resolution": stats.resolution, "resolution_changes": stats.resolution_changes,
            "cache_tokens": stats.last_cache_tokens,
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        return status


def _accelerator_memory() -> int:
    import torch

    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
