"""Feature gating by cluster version (etcd's cluster version, simplified).

Rules:
- Every node advertises the highest data format and command-set version it understands: in its
  peer Hello (`codec.wire.Hello`) and in `/cluster/local` + `/cluster/status`.
- The cluster's command set is the minimum over all members (voters AND learners: learners apply
  entries too) of what they advertised. A member whose Hello this node has not seen (down, not yet
  reconnected, or older code that advertises nothing) counts as `BASE_COMMAND_SET`: not knowing
  must never enable a feature.
- The leader refuses to propose a command whose kind is newer (`since`) than the cluster's
  command set: `FeatureNotEnabled`, answered 503 `feature_not_enabled` with the kind and the
  members that hold it back. So in a rolling upgrade an old node never receives an entry it
  cannot apply; once the last member runs the new code (and has connected), the kind is enabled
  without a restart. Followers do not check: they forward writes to the leader, which does.
- A node never advertises less after an upgrade; a downgrade below a command set that is
  already in the log is not supported (the old node stops on the entry, naming it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from raftkv.kv.commands import Put
from raftkv.kv.registry import BASE_COMMAND_SET, COMMAND_SET_VERSION, CommandBase, kind_of
from raftkv.runtime.api import FeatureNotEnabled
from raftkv.storage.format import FORMAT_VERSION

BASE_FORMAT: Final = 1  # what a peer that advertises nothing has
OWN_VERSIONS: Final = (FORMAT_VERSION, COMMAND_SET_VERSION)


@dataclass(frozen=True, slots=True)
class ClusterVersions:
    """The versions every member understands, and what each member advertised."""

    format_version: int
    command_set: int
    # (member, command set it advertised or None if not heard from), sorted; this node included
    members: tuple[tuple[str, int | None], ...]

    def holding_back(self, needs: int) -> list[str]:
        """Members below command set `needs`, in words."""
        return [
            f"{m} (not heard from)" if cs is None else f"{m} (at {cs})"
            for m, cs in self.members
            if cs is None or cs < needs
        ]


def cluster_versions(
    own_id: str, members: Iterable[str], advertised: Mapping[str, tuple[int, int]]
) -> ClusterVersions:
    """The minimum over `members` (see the module rules); `advertised` maps a peer to its
    (format, command set); this node counts with `OWN_VERSIONS`."""
    formats, sets = [FORMAT_VERSION], [COMMAND_SET_VERSION]
    listed: list[tuple[str, int | None]] = []
    for member in sorted({*members, own_id}):
        if member == own_id:
            listed.append((member, COMMAND_SET_VERSION))
            continue
        seen = advertised.get(member)
        fmt, cs = seen if seen is not None else (BASE_FORMAT, BASE_COMMAND_SET)
        formats.append(fmt)
        sets.append(cs)
        listed.append((member, None if seen is None else cs))
    return ClusterVersions(min(formats), min(sets), tuple(listed))


# A `put` of a bytes value encodes as msgpack bin, which a command-set-1 node cannot decode
# (its Put.value is str): binary values need command set 2 although the kind is older.
BINARY_VALUES_SINCE: Final = 2


def check_enabled(cmd: CommandBase, cluster: ClusterVersions) -> None:
    """Raise `FeatureNotEnabled` if `cmd` needs a newer command set than the cluster's."""
    kind = kind_of(cmd)
    name, needs = kind.name, kind.since
    if isinstance(cmd, Put) and isinstance(cmd.value, bytes) and needs < BINARY_VALUES_SINCE:
        name, needs = f"{kind.name} (binary value)", BINARY_VALUES_SINCE
    if needs > cluster.command_set:
        raise FeatureNotEnabled(name, needs, cluster.command_set, cluster.holding_back(needs))
