"""Celery's canvas on kyu's flows: `task`, `chain`, `group`, `chord`.

A flow is a tree in which each parent waits for its children and receives
their results (``ctx.dependency_results``). A chain ``a | b | c`` is the
tree ``c <- b <- a``; a chord ``group(a, b) | c`` is ``c <- {a, b}``.
Enqueue one with ``client.flow(...)``; it is created atomically, and a
failed link is retried alone (``client.retry(id, dependents=True)`` resets
the links after it that failed because of it).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

from . import _calls as calls
from ._model import JSON


class Signature:
    """One job, not yet enqueued."""

    def __init__(self, kind: str, payload: JSON = None, queue: Optional[str] = None, **options: Any) -> None:
        self.spec = calls.job_spec(queue, kind, payload, options)

    def to_flow(self) -> dict[str, Any]:
        return {"job": dict(self.spec)}

    def __or__(self, other: Union[Signature, Group, Chain]) -> Chain:
        return chain(self, other)

    def __repr__(self) -> str:
        return f"task({self.spec['kind']!r})"


class Group:
    """Jobs that run side by side. In a chain, the next link waits for all of
    them (a chord); alone, enqueue it with ``client.enqueue_many(g.jobs())``."""

    def __init__(self, members: list[Signature]) -> None:
        if not members:
            raise TypeError("a group needs at least one task")
        self.members = members

    def jobs(self) -> list[dict[str, Any]]:
        return [dict(m.spec) for m in self.members]

    def __or__(self, other: Union[Signature, Group, Chain]) -> Chain:
        return chain(self, other)


class Chain:
    """Links run one after another, each receiving the results before it."""

    def __init__(self, links: list[Union[Signature, Group]]) -> None:
        if not links:
            raise TypeError("a chain needs at least one task")
        if isinstance(links[-1], Group):
            raise TypeError("a chain must end with one task, not a group: a flow has one root (use chord)")
        if any(isinstance(link, Group) for link in links[1:]):
            # A flow is a tree: the link before a group cannot be the child
            # of every member at once.
            raise TypeError("a group can only start a chain (a chord): split the chain where the group is")
        self.links = links

    def __or__(self, other: Union[Signature, Group, Chain]) -> Chain:
        return chain(self, other)

    def to_flow(self) -> dict[str, Any]:
        below: list[dict[str, Any]] = []
        for link in self.links:
            if isinstance(link, Group):
                below = [m.to_flow() for m in link.members]
            else:
                node: dict[str, Any] = {"job": dict(link.spec)}
                if below:
                    node["children"] = below
                below = [node]
        return below[0]


def task(kind: str, payload: JSON = None, queue: Optional[str] = None, **options: Any) -> Signature:
    """A job to put in a flow: the same arguments as `Client.enqueue`."""
    return Signature(kind, payload, queue, **options)


def chain(*links: Union[Signature, Group, Chain]) -> Chain:
    flat: list[Union[Signature, Group]] = []
    for link in links:
        if isinstance(link, Chain):
            flat.extend(link.links)
        elif isinstance(link, (Signature, Group)):
            flat.append(link)
        else:
            raise TypeError(f"a chain links tasks, groups and chains, not {type(link).__name__}")
    return Chain(flat)


def group(*members: Signature) -> Group:
    return Group(list(members))


def chord(header: Union[Group, list[Signature]], body: Signature) -> Chain:
    """``body`` runs once every job of ``header`` finished, with their results."""
    return chain(header if isinstance(header, Group) else Group(list(header)), body)


def tree(job: Union[Signature, Mapping[str, Any]], *children: Any) -> dict[str, Any]:
    """A flow node by hand: ``tree(task("report"), tree(task("a")), task("b"))``."""
    spec = dict(job.spec) if isinstance(job, Signature) else dict(job)
    node: dict[str, Any] = {"job": spec}
    if children:
        node["children"] = [c.to_flow() if hasattr(c, "to_flow") else dict(c) for c in children]
    return node
