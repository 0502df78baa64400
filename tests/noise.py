"""What a quiet command must not print: progress bars, third-party warnings, tracebacks.

``chatter(output)`` returns the offending lines (empty when the output is clean), so an
assertion shows them.
"""

from __future__ import annotations

import re

#: tqdm bars ("Downloading artifacts:  33%|███▎  | 1/3 [00:00<00:00, 7.82it/s]"), Python
#: warnings ("...py:21: FutureWarning: ...", "WARNING mlflow.onnx: ..."), Lightning's banners
#: and tips, MLflow's run URLs, and tracebacks.
_CHATTER = re.compile(
    r"\d+%\|"                                     # a tqdm bar
    r"|Downloading artifacts|Uploading artifacts"
    r"|\b\w*Warning\b|\bWARNING\b|\bwarn\("       # warnings, by category or level
    r"|deprecated"
    r"|💡|🏃|🧪|GPU available:|TPU available:"     # Lightning's banners and tips, MLflow's run URLs
    r"|Traceback \(most recent call last\)"
)


def chatter(output: str) -> list[str]:
    """The lines of ``output`` (carriage returns split lines, as a terminal shows them)
    that are progress bars, warnings, banners or tracebacks."""
    lines = re.split(r"[\r\n]+", output)
    return [line for line in lines if _CHATTER.search(line)]

