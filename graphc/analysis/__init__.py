"""Analyses over the IR: channel-dependency groups (which channels must be pruned together) and
their removal; bodies of If/Loop/Scan nodes are analysed one by one (``BodyChannelGroups``).

    from graphc.analysis import ChannelGroups, format_groups, remove_channels
    analysis = ctx.analysis(ChannelGroups)          # cached in the Context
    for group in analysis.prunable: ...
    remove_channels(ctx.graph, {group: [0, 3]})     # then the analysis is stale
"""
from graphc.analysis.body_groups import BodyChannelGroups, BodyChannelGroupsByHeadDim, body_channel_groups
from graphc.analysis.channels import (ChannelAnalysis, ChannelGroup, ChannelGroups,
                                      ChannelGroupsByHeadDim, Member, analyze_channels)
from graphc.analysis.group_report import dependency_graph, format_groups, to_dot
from graphc.analysis.removal import RemovalResult, is_border_branch, mask_channels, remove_channels

__all__ = [
    "BodyChannelGroups", "BodyChannelGroupsByHeadDim", "body_channel_groups", "ChannelAnalysis", "ChannelGroup", "ChannelGroups", "ChannelGroupsByHeadDim", "Member",
    "analyze_channels", "dependency_graph", "format_groups", "to_dot", "RemovalResult",
    "is_border_branch", "mask_channels", "remove_channels",
]
