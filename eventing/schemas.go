package eventing

import "embed"

// Schemas holds the JSON Schema (draft 2020-12) documents that the catalogue's dataschema URIs name,
// one per URI, at schemas/<last segment of the URI> (e.g. schemas/rate.v1.json for
// https://kawase.dev/schemas/rate.v1.json). Nothing is served at those URIs, so the documents ship
// with the code that produces and consumes the payloads they describe; eventing's tests keep them in
// step with the Go payload types.
//
//go:embed schemas/*.json
var Schemas embed.FS
