"""The shared vocabulary of Inventiv Agents: the bottom layer, importing none of our packages.

Every other package may import it; it imports only third-party libraries. It holds what more than
one layer must agree on, so that the arrows between the packages run one way:

- :mod:`core.spec` -- the deployment file (YAML) model and its JSON schema;
- :mod:`core.clouds` -- the cloud protocol, its dataclasses, tags and error classes;
- :mod:`core.wire` -- the internal wire schemas the data plane sends the control API;
- :mod:`core.keys` -- the API-key and service-token format (no lookup, no hashing library);
- :mod:`core.states` -- the instance lifecycle states;
- :mod:`core.db`, :mod:`core.models` -- the SQLAlchemy schema (written only by the control API,
  read by ``finops``'s queries; the data plane never imports them).
"""
