"""Keys of ``AdaptationCommand.annotations`` that more than one subsystem reads (the contract, in one place).

- :data:`OFFERED_BLUEPRINTS`: the ids of the blueprints the controller offered its policy, JSON, sorted. With the
  catalog it lets a learner (Simic) re-encode any policy's decision exactly as a learned policy would have seen it.
- :data:`POLICY_ERROR`: set when the policy raised inside ``decide``: ``"policy 'NAME' failed: Type: message"``. The
  command is then a safe no-op; the console prints the line and the run record keeps it.
"""

from __future__ import annotations

OFFERED_BLUEPRINTS = "tamiyo.offered_blueprints"
POLICY_ERROR = "tamiyo.policy_error"
