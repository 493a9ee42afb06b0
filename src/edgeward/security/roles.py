"""Roles of local API clients, from the peer credentials of the Unix socket.

A client's uid and groups (SO_PEERCRED, then the account's group list) map
to the highest role configured for them. Root and the daemon's own user are
always admin. Roles are ordered: reader < operator < admin.
"""

from __future__ import annotations

import grp
import os
import pwd

from edgeward.config.schema import ApiConfig

ROLE_RANK = {"reader": 1, "operator": 2, "admin": 3}


def role_of(config: ApiConfig, uid: int | None, gid: int | None) -> str | None:
    """Return the client's highest role, or None when it has none."""
    if uid is None:
        return None
    if uid in (0, os.getuid()):
        return "admin"
    names = _user_names(uid)
    groups = _group_names(uid, gid)
    best: str | None = None
    for role, members in config.roles.items():
        users = {str(u) for u in members.users}
        group_names = {str(g) for g in members.groups}
        if users & names or group_names & groups:
            if best is None or ROLE_RANK[role] > ROLE_RANK[best]:
                best = role
    return best


def has_role(role: str | None, needed: str) -> bool:
    return role is not None and ROLE_RANK[role] >= ROLE_RANK[needed]


def _user_names(uid: int) -> set[str]:
    names = {str(uid)}
    try:
        names.add(pwd.getpwuid(uid).pw_name)
    except KeyError:
        pass
    return names


def _group_names(uid: int, gid: int | None) -> set[str]:
    gids = {gid} if gid is not None else set()
    try:
        entry = pwd.getpwuid(uid)
        gids.update(os.getgrouplist(entry.pw_name, entry.pw_gid))
    except KeyError:
        pass
    names = {str(g) for g in gids}
    for group_id in gids:
        try:
            names.add(grp.getgrgid(group_id).gr_name)
        except KeyError:
            continue
    return names
