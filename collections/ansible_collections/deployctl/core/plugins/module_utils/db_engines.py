# Copyright: deployctl maintainers
# MIT License (see galaxy.yml)
"""What every database engine of a backup set provides, and the engine for given parameters.

Standard library only: runs on the managed hosts (Python 3.8+)."""

from __future__ import annotations


def empty_objects():
    return {"views": [], "routines": [], "triggers": [], "events": []}


def sorted_objects(objects):
    return {k: sorted(set(objects.get(k, []))) for k in ("views", "routines", "triggers", "events")}


class Engine:
    name = None

    def __init__(self, params, tools):
        self.p = params
        self.tools = tools  # where the client tools run (tool_runners)
        self.database = params["database"]

    def close(self):
        pass

    def scratch_location(self, name):
        """What the app is pointed at to use the scratch database `name` (its name on a database server)."""
        return name

    def scratch_name_of(self, location):
        """The scratch database's name, from what scratch_location gave."""
        return location
