"""Claude Desktop drives the swarm: Swarm's tools as an MCP server (:mod:`.tools`), over stdio
(``swarm mcp``) and over streamable HTTP at ``/mcp`` on the control plane (:mod:`.http`)."""
