"""The node's parameters as ROS sees them: a ParameterDescriptor for each (type, description,
range, when a change applies), built from the ROS-free table in svlm_ros/params.py."""
from __future__ import annotations

from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType

from ..params import AT_START, DESCRIPTIONS, RUNTIME


def descriptor(name: str, value: Any) -> ParameterDescriptor:
    kinds = {bool: ParameterType.PARAMETER_BOOL, int: ParameterType.PARAMETER_INTEGER,
             float: ParameterType.PARAMETER_DOUBLE, str: ParameterType.PARAMETER_STRING,
             list: ParameterType.PARAMETER_STRING_ARRAY}
    text, bounds = DESCRIPTIONS.get(name, (f"svlm_ros setting {name}; see config/svlm.yaml", None))
    if name in RUNTIME:
        constraint = "changes apply at once"
    elif name in AT_START:
        constraint = "read when the node starts"
    else:
        constraint = "changes apply at the next configure"
    result = ParameterDescriptor(name=name, type=kinds[type(value)], description=text,
                                 additional_constraints=constraint)
    if bounds is not None and isinstance(value, float):
        result.floating_point_range = [FloatingPointRange(from_value=float(bounds[0]), to_value=float(bounds[1]),
                                                          step=0.0)]
    elif bounds is not None and isinstance(value, int) and not isinstance(value, bool):
        result.integer_range = [IntegerRange(from_value=int(bounds[0]), to_value=int(bounds[1]), step=1)]
    return result
