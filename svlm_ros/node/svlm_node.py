"""The svlm lifecycle node: camera images in, svlm_ros/Description for every second out."""
from __future__ import annotations

import threading
import time
from typing import Optional

import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from svlm_ros.msg import Description
from svlm_ros.srv import Ask

from ..engine.models import RANDOM_MODELS, load_model
from . import parameters
from .scheduler import Described, Scheduler

COMPRESSED_SUFFIX = "/compressed"  # the image_transport convention
THROTTLE_S = 5.0


def to_time_msg(seconds: float) -> TimeMsg:
    whole = int(np.floor(seconds))
    return TimeMsg(sec=whole, nanosec=int(round((seconds - whole) * 1e9)) % 1_000_000_000)


class SvlmNode(LifecycleNode):
    def __init__(self, node_name: str = "svlm", **kwargs):
        super().__init__(node_name, **kwargs)
        self._values = parameters.defaults()
        for name, value in self._values.items():
            self.declare_parameter(name, value, parameters.descriptor(name, value))
        self._values = {name: self.get_parameter(name).value for name in self._values}
        # Built once here and on every accepted change; a bad launch-time value stops the node early.
        self._configs = parameters.build_configs(self._values)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.loaded = None
        self.scheduler: Optional[Scheduler] = None
        self.model_error: Optional[str] = None
        self.model_status = "not loaded"
        self._image_subscriptions = []
        self._description_pub = self._text_pub = None
        self._svlm_services = []
        self._describing = False
        self._publish_lock = threading.Lock()
        self._frames_group = ReentrantCallbackGroup()
        self._service_group = ReentrantCallbackGroup()
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._diagnostics_timer = self.create_timer(self.node_config.diagnostics_period_s, self._publish_diagnostics,
                                                    callback_group=MutuallyExclusiveCallbackGroup())

    # ----- configuration ----------------------------------------------------------------------
    @property
    def configs(self):
        return self._configs

    @property
    def node_config(self):
        return self._configs[2]

    def _on_set_parameters(self, params) -> SetParametersResult:
        changes = {p.name: p.value for p in params}
        try:
            configs = parameters.build_configs({**self._values, **changes})
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
        deferred = sorted(set(changes) - parameters.RUNTIME)
        if deferred:
            self.get_logger().info(f"{deferred} will apply at the next configure")
        return SetParametersResult(successful=True)

    def release(self) -> None:
        """Stop the worker and drop the model, whatever the lifecycle state."""
        self._describing = False
        if self.scheduler is not None:
            self.scheduler.stop()
        self.scheduler = None
        self.loaded = None

    # ----- lifecycle --------------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        model_config, engine_config, node_config = self.configs
        self.model_status = f"loading {model_config.model}"
        self.get_logger().info(f"loading model {model_config.model!r} on {model_config.device}")
        try:
            self.loaded = load_model(model_config)
        except Exception as error:
            self.model_error = f"model {model_config.model!r} failed to load: {error}"
            self.model_status = "failed"
            self.get_logger().error(self.model_error)
            return TransitionCallbackReturn.FAILURE
        self.model_error = None
        self.model_status = f"loaded {self.loaded.name} on {self.loaded.device} ({self.loaded.dtype})"
        if model_config.model in RANDOM_MODELS:
            self.get_logger().warning(f"{model_config.model} has random weights: its descriptions are meaningless "
                                      "words. Set the parameter `model` to a StreamingVLM checkpoint directory.")
        self.scheduler = Scheduler(self.loaded, engine_config, node_config, self._publish, node_config.image_topics)
        if node_config.warm_up and not self._warm_up():
            return TransitionCallbackReturn.FAILURE
        self._description_pub = self.create_publisher(Description, "~/description", 10)
        self._text_pub = self.create_publisher(String, "~/text", 10)
        self._svlm_services = [
            self.create_service(Ask, "~/ask", self._on_ask, callback_group=self._service_group),
            self.create_service(Trigger, "~/reset", self._on_reset, callback_group=self._service_group),
        ]
        return TransitionCallbackReturn.SUCCESS

    def _warm_up(self) -> bool:
        """One blank window per camera session, so the first real window is not the slow one."""
        for name, stream in self.scheduler.cameras.items():
            try:
                seconds = stream.session.warm_up()
            except Exception as error:
                self.model_error = (f"model {self.loaded.name!r} failed its warm-up window for {name}: {error}; "
                                    "set warm_up:=false to skip the warm-up, or fix the model settings")
                self.model_status = "failed"
                self.get_logger().error(self.model_error)
                self.release()
                return False
            self.get_logger().info(f"warmed up {name} in {seconds:.2f} s ({stream.session.decode_mode} decoding)")
        return True

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        node_config = self.node_config
        reliability = ReliabilityPolicy.RELIABLE if node_config.reliable_qos else qos_profile_sensor_data.reliability
        qos = QoSProfile(depth=node_config.qos_depth, reliability=reliability, history=HistoryPolicy.KEEP_LAST,
                         durability=qos_profile_sensor_data.durability)
        for topic in node_config.image_topics:
            message_type = CompressedImage if topic.endswith(COMPRESSED_SUFFIX) else Image
            self._image_subscriptions.append(self.create_subscription(
                message_type, topic, lambda msg, topic=topic: self._on_image(topic, msg), qos,
                callback_group=self._frames_group))
        self.scheduler.start()
        self._describing = True
        self.get_logger().info(f"describing {node_config.image_topics} on {self.resolve_topic_name('~/description')}")
        return TransitionCallbackReturn.SUCCESS

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._describing = False
        for subscription in self._image_subscriptions:
            self.destroy_subscription(subscription)
        self._image_subscriptions = []
        if self.scheduler is not None:
            self.scheduler.stop()
        return TransitionCallbackReturn.SUCCESS

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        for service in self._svlm_services:
            self.destroy_service(service)
        self._svlm_services = []
        for publisher in (self._description_pub, self._text_pub):
            if publisher is not None:
                self.destroy_publisher(publisher)
        self._description_pub = self._text_pub = None
        self.scheduler = None
        self.loaded = None
        self.model_status = "not loaded"
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self._describing:
            self.on_deactivate(state)
        if self.scheduler is not None or self._svlm_services:
            self.on_cleanup(state)
        return TransitionCallbackReturn.SUCCESS

    # ----- data path --------------------------------------------------------------------------
    def _on_image(self, topic: str, msg) -> None:
        stream = self.scheduler.cameras.get(topic) if self.scheduler else None
        if not self._describing or stream is None:
            return
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        stream.frame_id = msg.header.frame_id
        for warning in stream.feed(stamp, msg):
            self.get_logger().warning(f"{topic}: {warning}", throttle_duration_sec=THROTTLE_S)
        self.scheduler.notify()

    def _publish(self, described: Described) -> None:
        result, window = described.result, described.window
        node_config = self.node_config
        if result.silent and not node_config.publish_silent:
            return
        msg = Description()
        msg.header.stamp = to_time_msg(window.end_s)
        msg.header.frame_id = self.scheduler.cameras[described.camera].frame_id
        msg.window_start = to_time_msg(window.start_s)
        msg.window_end = to_time_msg(window.end_s)
        msg.camera = described.camera
        msg.text = result.text
        msg.silent = result.silent
        msg.index = result.index
        msg.latency = float(described.latency_s)
        msg.generated_tokens = result.generated_tokens
        msg.cache_tokens = result.cache_tokens
        with self._publish_lock:
            if self._description_pub is not None and self._describing:
                self._description_pub.publish(msg)
                if node_config.publish_text and self._text_pub is not None and not result.silent:
                    self._text_pub.publish(String(data=result.text))

    # ----- services ---------------------------------------------------------------------------
    def _on_ask(self, request, response):
        response.success = False
        if self.scheduler is None or not self._describing:
            response.message = "the node is not active (model not loaded or deactivated)"
            return response
        cameras = list(self.scheduler.cameras)
        camera = request.camera or cameras[0]
        if camera not in self.scheduler.cameras:
            response.message = f"unknown camera {camera!r}; cameras: {cameras}"
            return response
        stream = self.scheduler.cameras[camera]
        if stream.last_result is None:
            response.message = f"no video from {camera} yet"
            return response
        future = self.scheduler.ask(camera, request.question)
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
        return response

    def _on_reset(self, request, response):
        if self.scheduler is None:
            response.success, response.message = False, "the node is not configured"
            return response
        self.scheduler.reset()
        response.success, response.message = True, "every camera starts a fresh stream with its next frame"
        return response

    # ----- diagnostics ------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        array = DiagnosticArray()
        array.header.stamp = self.get_clock().now().to_msg()
        model = DiagnosticStatus(name=f"{self.get_name()}: model", hardware_id=self.get_name())
        if self.model_error:
            model.level, model.message = DiagnosticStatus.ERROR, self.model_error
        else:
            model.level, model.message = DiagnosticStatus.OK, self.model_status
        model.values = [KeyValue(key="accelerator_memory_bytes", value=str(_accelerator_memory()))]
        if self.scheduler is not None and self.scheduler.last_error:
            model.values.append(KeyValue(key="last_window_error", value=self.scheduler.last_error))
        array.status.append(model)
        if self.scheduler is not None:
            for name, stream in self.scheduler.cameras.items():
                array.status.append(self._camera_status(name, stream))
        self._diagnostics_pub.publish(array)

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
        elif p50 > window:
            status.level, status.message = DiagnosticStatus.WARN, "behind real time: skipping windows"
        values = {
            "real_time_factor": f"{real_time_factor:.2f}", "latency_p50_s": f"{p50:.3f}",
            "latency_p95_s": f"{p95:.3f}", "processed_windows": stats.processed_windows,
            "skipped_windows": stats.skipped_windows, "empty_windows": stats.empty_windows,
            "failed_windows": stats.failed_windows, "frames": stats.frames, "late_frames": stats.late_frames,
            "bad_frames": stats.bad_frames, "stream_restarts": stats.restarts,
            "cache_tokens": stats.last_cache_tokens,
        }
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        return status


def _accelerator_memory() -> int:
    import torch

    return torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
