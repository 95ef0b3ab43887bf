//go:build !jsoniter

// The JSON library the envelope is decoded and encoded with: Go's encoding/json (the default,
// what the tests run). Build with `-tags jsoniter` for json-iterator's
// ConfigCompatibleWithStandardLibrary instead (json_jsoniter.go), to compare the two.

package main

import "encoding/json"

// rawMessage is the payload's type.
type rawMessage = json.RawMessage

const jsonLibrary = "encoding/json"

func unmarshal(data []byte, v interface{}) error { return json.Unmarshal(data, v) }

func marshal(v interface{}) ([]byte, error) { return json.Marshal(v) }
