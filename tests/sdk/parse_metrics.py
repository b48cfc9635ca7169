"""Reads a Prometheus text exposition on stdin with prometheus_client's own parser, and
prints its families as one JSON line: [{"name", "type", "help", "samples": [[name,
labels, value], ...]}, ...]. A page the parser refuses ends the script with its error."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families

families = [
    {
        "name": family.name,
        "type": family.type,
        "help": family.documentation,
        "samples": [[s.name, s.labels, s.value] for s in family.samples],
    }
    for family in text_string_to_metric_families(sys.stdin.read())
]
print(json.dumps(families))
