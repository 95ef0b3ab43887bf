// Verdicts: what the Go SDK's rules (envelope.go) make of a byte string, as one JSON line.
//
// A verdict says whether json.Unmarshal decoded the bytes, which field Validate refused (if
// any), whether FromBytes accepted them, the decoded fields (strings as Go holds them, the
// timestamp as time.Time prints it plus its instant and offset, the payload's exact bytes), and
// what ToBytes writes for an accepted envelope. Text that is not UTF-8 is given in hex instead.

package main

import (
	"encoding/hex"
	"unicode/utf8"
)

// text is a string field that is UTF-8 text, or hex bytes when it is not.
type text struct {
	Text *string `json:"text,omitempty"`
	Hex  *string `json:"hex,omitempty"`
}

func textOf(b []byte) text {
	if utf8.Valid(b) {
		s := string(b)
		return text{Text: &s}
	}
	h := hex.EncodeToString(b)
	return text{Hex: &h}
}

// decodedFields are the envelope's fields after json.Unmarshal.
type decodedFields struct {
	EventID       text   `json:"event_id"`
	AggregateID   text   `json:"aggregate_id"`
	EventType     text   `json:"event_type"`
	EventVersion  int64  `json:"event_version"`
	Timestamp     string `json:"timestamp"`
	UnixSeconds   int64  `json:"unix_seconds"`
	Nanos         int    `json:"nanos"`
	OffsetSeconds int    `json:"offset_seconds"`
	TraceID       text   `json:"trace_id"`
	CorrelationID text   `json:"correlation_id"`
	TenantID      text   `json:"tenant_id"`
	// The payload's bytes (nil, so absent, when the JSON had none).
	Payload *text `json:"payload,omitempty"`
}

type envelopeVerdict struct {
	Kind         string         `json:"kind"`
	Name         string         `json:"name"`
	Input        text           `json:"input"`
	Decoded      bool           `json:"decoded"`
	DecodeError  string         `json:"decode_error,omitempty"`
	InvalidField string         `json:"invalid_field,omitempty"`
	Accepted     bool           `json:"accepted"`
	Envelope     *decodedFields `json:"envelope,omitempty"`
	Encoded      *text          `json:"encoded,omitempty"`
	EncodeError  string         `json:"encode_error,omitempty"`
}

func judgeEnvelope(name string, input []byte) envelopeVerdict {
	v := envelopeVerdict{Kind: "envelope", Name: name, Input: textOf(input)}
	env, decodeErr, invalid := FromBytes(input)
	if decodeErr != nil {
		v.DecodeError = decodeErr.Error()
		return v
	}
	v.Decoded = true
	v.Envelope = fieldsOf(env)
	if invalid != nil {
		v.InvalidField = invalid.Field
		return v
	}
	v.Accepted = true
	if encoded, err := env.ToBytes(); err != nil {
		v.EncodeError = err.Error()
	} else {
		t := textOf(encoded)
		v.Encoded = &t
	}
	return v
}

func fieldsOf(env *Envelope) *decodedFields {
	f := &decodedFields{
		EventID:       textOf([]byte(env.EventID)),
		AggregateID:   textOf([]byte(env.AggregateID)),
		EventType:     textOf([]byte(env.EventType)),
		EventVersion:  env.EventVersion,
		UnixSeconds:   env.Timestamp.Unix(),
		Nanos:         env.Timestamp.Nanosecond(),
		TraceID:       textOf([]byte(env.TraceID)),
		CorrelationID: textOf([]byte(env.CorrelationID)),
		TenantID:      textOf([]byte(env.TenantID)),
	}
	_, f.OffsetSeconds = env.Timestamp.Zone()
	if printed, err := env.Timestamp.MarshalJSON(); err != nil {
		f.Timestamp = "error: " + err.Error()
	} else {
		f.Timestamp = string(printed[1 : len(printed)-1])
	}
	if env.Payload != nil {
		p := textOf(env.Payload)
		f.Payload = &p
	}
	return f
}

// header is one record header (name and value bytes).
type header struct {
	Name  text `json:"name"`
	Value text `json:"value"`
}

type aggregateVerdict struct {
	Kind    string   `json:"kind"`
	Name    string   `json:"name"`
	Value   text     `json:"value"`
	Headers []header `json:"headers"`
	// The key's bytes; absent for a record without a key.
	Key *text `json:"key,omitempty"`
	// ExtractAggregateID's result; absent when it found none.
	AggregateID *text `json:"aggregate_id,omitempty"`
}

func judgeAggregate(name string, value []byte, headers [][2][]byte, key []byte) aggregateVerdict {
	v := aggregateVerdict{Kind: "aggregate_id", Name: name, Value: textOf(value), Headers: []header{}}
	for _, h := range headers {
		v.Headers = append(v.Headers, header{textOf(h[0]), textOf(h[1])})
	}
	if key != nil {
		k := textOf(key)
		v.Key = &k
	}
	if id := ExtractAggregateID(value, headerMap(headers), key); id != "" {
		t := textOf([]byte(id))
		v.AggregateID = &t
	}
	return v
}
