// The case table: envelope documents and records whose verdicts the Rust envelope must match.
//
// The inputs are written here (systematically: each field through a set of values, the
// document's shape, key matching, timestamps, payloads, the order of the checks); the verdicts
// are never written by hand: `bus-go-peer cases` runs each input through envelope.go (Go's
// encoding/json and time, with the SDK's rules) and prints one JSON line per case.

package main

import (
	"fmt"
	"strings"
)

// member is one key and its raw JSON value, both written as they appear in the document.
type member struct{ key, raw string }

// baseMembers is a valid envelope with every required field and no optional one.
func baseMembers() []member {
	return []member{
		{`"event_id"`, `"e-1"`},
		{`"aggregate_id"`, `"order-1"`},
		{`"event_type"`, `"OrderPlaced"`},
		{`"event_version"`, `1`},
		{`"timestamp"`, `"2024-03-01T12:34:56Z"`},
		{`"payload"`, `{"total":42}`},
	}
}

func render(members []member) string {
	parts := make([]string, len(members))
	for i, m := range members {
		parts[i] = m.key + ":" + m.raw
	}
	return "{" + strings.Join(parts, ",") + "}"
}

// with is the base envelope with field's value replaced by raw (added at the end when the base
// has no such field).
func with(field, raw string) string {
	return render(withAll(baseMembers(), field, raw))
}

func withAll(members []member, field, raw string) []member {
	key := `"` + field + `"`
	out := append([]member(nil), members...)
	for i := range out {
		if out[i].key == key {
			out[i].raw = raw
			return out
		}
	}
	return append(out, member{key, raw})
}

// without is the base envelope without field.
func without(field string) string {
	key := `"` + field + `"`
	var out []member
	for _, m := range baseMembers() {
		if m.key != key {
			out = append(out, m)
		}
	}
	return render(out)
}

type envelopeCase struct {
	name  string
	input string
}

// stringValues are raw JSON values tried in every string field: blanks of each kind of
// whitespace Go's strings.TrimSpace removes (and some it keeps), escapes, bytes that are not
// UTF-8, lone surrogates, null, and values of other JSON types.
var stringValues = []struct{ name, raw string }{
	{"empty", `""`},
	{"space", `" "`},
	{"tab-newline-cr", `"\t\n\r"`},
	{"vertical-tab-form-feed", `"\u000b\u000c"`},
	{"file-separator", `"\u001c"`},
	{"nbsp", `"\u00a0"`},
	{"next-line", `"\u0085"`},
	{"em-space", `"\u2003"`},
	{"line-separator", `"\u2028"`},
	{"ideographic-space", `"\u3000"`},
	{"zero-width-space", `"\u200b"`},
	{"mongolian-vowel-separator", `"\u180e"`},
	{"byte-order-mark", `"\ufeff"`},
	{"nul", `"\u0000"`},
	{"x", `"x"`},
	{"padded-x", `"  x  "`},
	{"nbsp-padded-x", `"\u00a0x\u00a0"`},
	{"escaped-x", `"\u0078"`},
	{"solidus-escape", `"a\/b"`},
	{"e-acute", `"é"`},
	{"surrogate-pair", `"\ud83d\ude00"`},
	{"lone-high-surrogate", `"\ud83d"`},
	{"lone-low-surrogate", `"\ude00"`},
	{"high-surrogate-then-letter", `"\ud83d\u0041"`},
	{"invalid-utf8-byte", "\"\xff\""},
	{"truncated-utf8", "\"\xe2\x82\""},
	{"utf8-surrogate-bytes", "\"\xed\xa0\x80\""},
	{"overlong-utf8", "\"\xc0\xaf\""},
	{"null", `null`},
	{"number", `7`},
	{"true", `true`},
	{"object", `{}`},
	{"array", `[]`},
}

func envelopeCases() []envelopeCase {
	var cases []envelopeCase
	add := func(name, input string) { cases = append(cases, envelopeCase{name, input}) }

	// The document as a whole.
	add("document/base", render(baseMembers()))
	add("document/every-optional", render(append(baseMembers(),
		member{`"trace_id"`, `"t-1"`}, member{`"correlation_id"`, `"c-1"`},
		member{`"tenant_id"`, `"tenant-1"`})))
	add("document/empty-input", "")
	add("document/whitespace-only", " \n\t ")
	add("document/null", "null")
	add("document/null-padded", " null ")
	add("document/empty-object", "{}")
	add("document/array", "[]")
	add("document/array-of-envelope", "["+render(baseMembers())+"]")
	add("document/string", `"x"`)
	add("document/number", `1`)
	add("document/true", `true`)
	add("document/not-json", `not json`)
	add("document/truncated", render(baseMembers())[:40])
	add("document/surrounding-whitespace", " \r\n\t"+render(baseMembers())+"\n ")
	add("document/trailing-garbage", render(baseMembers())+"x")
	add("document/two-objects", render(baseMembers())+render(baseMembers()))
	add("document/byte-order-mark", "\xef\xbb\xbf"+render(baseMembers()))
	add("document/trailing-comma", strings.TrimSuffix(render(baseMembers()), "}")+",}")
	add("document/single-quotes", strings.ReplaceAll(render(baseMembers()), `"`, `'`))
	add("document/nul-byte-outside-strings", render(baseMembers())+"\x00")
	add("document/control-character-in-string", with("event_type", "\"Order\x01Placed\""))
	add("document/raw-newline-in-string", with("event_type", "\"Order\nPlaced\""))
	add("document/raw-del-in-string", with("event_type", "\"Order\x7fPlaced\""))
	add("document/bad-escape", with("event_type", `"Order\xPlaced"`))
	add("document/short-unicode-escape", with("event_type", `"\u12"`))
	add("document/single-quote-escape", with("event_type", `"\'"`))
	add("document/leading-zero-number", with("event_version", `01`))
	add("document/plus-number", with("event_version", `+1`))
	add("document/number-trailing-dot", with("event_version", `1.`))
	add("document/number-bare-exponent", with("event_version", `1e`))
	add("document/literal-typo", with("trace_id", `nul`))
	add("document/uppercase-literal", with("trace_id", `NULL`))
	add("document/unquoted-key", strings.Replace(render(baseMembers()), `"event_id"`, `event_id`, 1))
	add("document/missing-colon", strings.Replace(render(baseMembers()), `"event_id":`, `"event_id" `, 1))

	// Unknown keys are ignored, whatever their value.
	add("unknown/string", with("schema", `"v9"`))
	add("unknown/nested", with("meta", `{"a":[1,{"b":null}],"c":"\ud800"}`))
	add("unknown/invalid-utf8-value", with("meta", "\"\xff\xfe\""))
	add("unknown/invalid-utf8-key", render(append(baseMembers(), member{"\"\xff\"", `1`})))
	add("unknown/empty-key", with("", `1`))
	add("unknown/near-miss", with("eventid", `""`))

	// Keys: an exact match first, else Go's case folding (ASCII case, and the long s and
	// Kelvin sign folding to s and k); escapes in keys are decoded first; the last duplicate
	// wins, except that null leaves the earlier value.
	add("keys/upper-case", strings.Replace(render(baseMembers()), `"event_id"`, `"EVENT_ID"`, 1))
	add("keys/mixed-case", strings.Replace(render(baseMembers()), `"aggregate_id"`, `"Aggregate_Id"`, 1))
	add("keys/mixed-case-payload", strings.Replace(render(baseMembers()), `"payload"`, `"PayLoad"`, 1))
	add("keys/escaped", strings.Replace(render(baseMembers()), `"event_id"`, `"\u0065vent_id"`, 1))
	add("keys/long-s-timestamp", strings.Replace(render(baseMembers()), `"timestamp"`, `"time\u017ftamp"`, 1))
	add("keys/long-s-raw-timestamp", strings.Replace(render(baseMembers()), `"timestamp"`, "\"time\xc5\xbftamp\"", 1))
	add("keys/long-s-event-version", strings.Replace(render(baseMembers()), `"event_version"`, `"event_ver\u017fion"`, 1))
	add("keys/kelvin-not-a-field", with("\u212aey", `1`))
	add("keys/dotless-i-is-not-i", strings.Replace(render(baseMembers()), `"event_id"`, `"event_\u0131d"`, 1))
	add("keys/fullwidth-letter-is-not-a-letter", strings.Replace(render(baseMembers()), `"event_id"`, `"\uff45vent_id"`, 1))
	add("keys/trailing-space", strings.Replace(render(baseMembers()), `"event_id"`, `"event_id "`, 1))
	add("keys/duplicate-last-wins", render(append(baseMembers(), member{`"event_type"`, `"Second"`})))
	add("keys/duplicate-folded-last-wins", render(append(baseMembers(), member{`"EVENT_TYPE"`, `"Second"`})))
	add("keys/duplicate-null-keeps-earlier", render(append(baseMembers(), member{`"event_type"`, `null`})))
	add("keys/duplicate-blank-replaces", render(append(baseMembers(), member{`"event_type"`, `" "`})))
	add("keys/duplicate-payload-last-wins", render(append(baseMembers(), member{`"payload"`, `[2]`})))
	add("keys/duplicate-payload-null", render(append(baseMembers(), member{`"payload"`, `null`})))
	add("keys/duplicate-timestamp-null-keeps", render(append(baseMembers(), member{`"timestamp"`, `null`})))
	add("keys/duplicate-type-error-then-valid", render(append(
		[]member{{`"event_version"`, `"1"`}}, baseMembers()...)))
	add("keys/duplicate-valid-then-type-error", render(append(baseMembers(), member{`"event_version"`, `"2"`})))

	// Every string field through the same values.
	for _, field := range []string{"event_id", "aggregate_id", "event_type", "trace_id", "correlation_id", "tenant_id"} {
		add(field+"/missing", without(field))
		for _, v := range stringValues {
			add(field+"/"+v.name, with(field, v.raw))
		}
	}

	// The aggregate id's format, checked after trimming: length in bytes, its characters.
	a := func(n int) string { return strings.Repeat("a", n) }
	for _, v := range []struct{ name, raw string }{
		{"every-allowed-character", `"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789:_-./"`},
		{"separators-only", `"..."`},
		{"slash", `"/"`},
		{"length-256", `"` + a(256) + `"`},
		{"length-257", `"` + a(257) + `"`},
		{"length-256-padded", `"  ` + a(256) + `  "`},
		{"length-256-nbsp-padded", `"\u00a0` + a(256) + `\u00a0"`},
		{"non-ascii-over-256-bytes", `"` + strings.Repeat("é", 129) + `"`},
		{"non-ascii-under-256-bytes", `"` + strings.Repeat("é", 10) + `"`},
		{"inner-space", `"order 1"`},
		{"inner-tab", `"order\t1"`},
		{"plus", `"a+b"`},
		{"at", `"a@b"`},
		{"hash", `"a#b"`},
		{"percent", `"a%20b"`},
		{"comma", `"a,b"`},
		{"semicolon", `"a;b"`},
		{"backslash", `"a\\b"`},
		{"quote", `"a\"b"`},
		{"unicode-hyphen", `"a\u2010b"`},
		{"zero-width-space-inside", `"a\u200bb"`},
		{"zero-width-space-leading", `"\u200border-1"`},
		{"nul-trailing", `"order-1\u0000"`},
		{"padded", `" order-1 "`},
		{"tab-padded", `"\torder-1\n"`},
		{"japanese", `"日本"`},
		{"escaped-letters", `"\u006frder-1"`},
		{"invalid-utf8-inside", "\"order-\xff\""},
	} {
		add("aggregate_id/"+v.name, with("aggregate_id", v.raw))
	}

	// event_version: an int64 from a JSON number without fraction or exponent.
	for _, v := range []struct{ name, raw string }{
		{"zero", `0`}, {"negative", `-1`}, {"one", `1`}, {"large", `123456789`},
		{"max", `9223372036854775807`}, {"max-plus-one", `9223372036854775808`},
		{"min", `-9223372036854775808`}, {"min-minus-one", `-9223372036854775809`},
		{"huge", `100000000000000000000000000000`},
		{"one-point-zero", `1.0`}, {"fraction", `1.5`}, {"exponent", `1e0`},
		{"upper-exponent", `1E2`}, {"negative-zero", `-0`}, {"zero-point-zero", `0.0`},
		{"string", `"1"`}, {"null", `null`}, {"true", `true`}, {"array", `[1]`}, {"object", `{}`},
	} {
		add("event_version/"+v.name, with("event_version", v.raw))
	}
	add("event_version/missing", without("event_version"))

	// timestamp: time.Time's UnmarshalJSON on the raw JSON (RFC 3339, escapes not decoded).
	for _, v := range []struct{ name, raw string }{
		{"utc", `"2024-03-01T12:34:56Z"`},
		{"millis", `"2024-03-01T12:34:56.789Z"`},
		{"nanos", `"2024-03-01T12:34:56.123456789Z"`},
		{"trailing-zero-fraction", `"2024-03-01T12:34:56.100Z"`},
		{"zero-fraction", `"2024-03-01T12:34:56.000000000Z"`},
		{"twelve-digit-fraction", `"2024-03-01T12:34:56.123456789999Z"`},
		{"one-digit-fraction", `"2024-03-01T12:34:56.5Z"`},
		{"comma-fraction", `"2024-03-01T12:34:56,5Z"`},
		{"dot-without-digits", `"2024-03-01T12:34:56.Z"`},
		{"positive-offset", `"2024-03-01T14:34:56+02:00"`},
		{"negative-offset", `"2024-03-01T07:04:56-05:30"`},
		{"offset-with-nanos", `"2024-03-01T14:34:56.123456789+02:00"`},
		{"plus-zero-offset", `"2024-03-01T12:34:56+00:00"`},
		{"minus-zero-offset", `"2024-03-01T12:34:56-00:00"`},
		{"offset-23-59", `"2024-03-01T12:34:56+23:59"`},
		{"offset-24-00", `"2024-03-01T12:34:56+24:00"`},
		{"offset-99-59", `"2024-03-01T12:34:56-99:59"`},
		{"offset-minutes-60", `"2024-03-01T12:34:56+01:60"`},
		{"offset-99-99", `"2024-03-01T12:34:56+99:99"`},
		{"offset-without-colon", `"2024-03-01T12:34:56+0200"`},
		{"offset-hours-only", `"2024-03-01T12:34:56+02"`},
		{"offset-with-seconds", `"2024-03-01T12:34:56+02:00:00"`},
		{"no-offset", `"2024-03-01T12:34:56"`},
		{"lowercase-t", `"2024-03-01t12:34:56Z"`},
		{"lowercase-z", `"2024-03-01T12:34:56z"`},
		{"space-separator", `"2024-03-01 12:34:56Z"`},
		{"date-only", `"2024-03-01"`},
		{"one-digit-month", `"2024-3-01T12:34:56Z"`},
		{"one-digit-day", `"2024-03-1T12:34:56Z"`},
		{"one-digit-hour", `"2024-03-01T1:34:56Z"`},
		{"one-digit-minute", `"2024-03-01T12:4:56Z"`},
		{"three-digit-hour", `"2024-03-01T123:34:56Z"`},
		{"hour-24", `"2024-03-01T24:00:00Z"`},
		{"minute-60", `"2024-03-01T12:60:00Z"`},
		{"leap-second", `"2016-12-31T23:59:60Z"`},
		{"month-00", `"2024-00-01T12:34:56Z"`},
		{"month-13", `"2024-13-01T12:34:56Z"`},
		{"day-00", `"2024-03-00T12:34:56Z"`},
		{"day-32", `"2024-01-32T12:34:56Z"`},
		{"february-29-leap-year", `"2024-02-29T12:34:56Z"`},
		{"february-29-common-year", `"2023-02-29T12:34:56Z"`},
		{"february-29-1900", `"1900-02-29T00:00:00Z"`},
		{"february-29-2000", `"2000-02-29T00:00:00Z"`},
		{"april-31", `"2024-04-31T00:00:00Z"`},
		{"year-0000", `"0000-01-01T00:00:00Z"`},
		{"year-0000-positive-offset", `"0000-01-01T00:00:00+01:00"`},
		{"year-0001", `"0001-01-01T00:00:00Z"`},
		{"year-9999", `"9999-12-31T23:59:59.999999999Z"`},
		{"year-9999-negative-offset", `"9999-12-31T23:59:59-01:00"`},
		{"five-digit-year", `"10000-01-01T00:00:00Z"`},
		{"three-digit-year", `"999-01-01T00:00:00Z"`},
		{"signed-year", `"+2024-03-01T12:34:56Z"`},
		{"negative-year", `"-0001-01-01T00:00:00Z"`},
		{"unix-epoch", `"1970-01-01T00:00:00Z"`},
		{"before-epoch", `"1969-12-31T23:59:59.999999999Z"`},
		{"escaped-digit", `"\u0032024-03-01T12:34:56Z"`},
		{"escaped-z", `"2024-03-01T12:34:56\u005a"`},
		{"leading-space", `" 2024-03-01T12:34:56Z"`},
		{"trailing-space", `"2024-03-01T12:34:56Z "`},
		{"trailing-text", `"2024-03-01T12:34:56Zjunk"`},
		{"empty-string", `""`},
		{"null", `null`},
		{"number", `1709296496`},
		{"true", `true`},
		{"object", `{}`},
		{"array", `["2024-03-01T12:34:56Z"]`},
	} {
		add("timestamp/"+v.name, with("timestamp", v.raw))
	}
	add("timestamp/missing", without("timestamp"))

	// payload: json.RawMessage keeps the value's exact bytes; only an absent payload is empty.
	for _, v := range []struct{ name, raw string }{
		{"object", `{"a":1}`},
		{"empty-object", `{}`},
		{"array", `[1,2,3]`},
		{"empty-array", `[]`},
		{"empty-string", `""`},
		{"blank-string", `"   "`},
		{"string", `"x"`},
		{"zero", `0`},
		{"negative-float", `-1.5e300`},
		{"big-integer", `12345678901234567890123456789`},
		{"false", `false`},
		{"null", `null`},
		{"inner-whitespace", "{ \"z\" : 1.0 ,\n  \"a\":[ 1e2, 0.10 ],\t\"s\":\"\\u00e9\\n\" }"},
		{"html-characters", `{"h":"<a href='x'>&amp;</a>"}`},
		{"line-separator", `"a\u2028b"`},
		{"raw-line-separator", "\"a\u2028b\""},
		{"unicode", `{"unicode":"café – 日本"}`},
		{"invalid-utf8-in-string", "{\"b\":\"\xff\xfe\"}"},
		{"lone-surrogate-escape", `"\ud800"`},
		{"deep", strings.Repeat("[", 100) + strings.Repeat("]", 100)},
	} {
		add("payload/"+v.name, with("payload", v.raw))
	}
	add("payload/missing", without("payload"))
	add("payload/whitespace-around", strings.Replace(render(baseMembers()), `"payload":{"total":42}`, "\"payload\" : \n {\"total\":42} \t", 1))
	// Go's scanner nests at most 10,000 values (the envelope object is the first).
	for _, depth := range []int{9999, 10000} {
		add(fmt.Sprintf("payload/nested-%d-arrays", depth),
			with("payload", strings.Repeat("[", depth)+strings.Repeat("]", depth)))
	}
	add("payload/nested-10000-in-unknown-field", with("meta", strings.Repeat("[", 10000)+strings.Repeat("]", 10000)))

	// The order of the checks: the first broken rule is the one reported; a type error anywhere
	// makes the whole document undecodable.
	order := func(name string, members []member) { add("order/"+name, render(members)) }
	order("event-id-before-aggregate-id", withAll(withAll(baseMembers(), "event_id", `""`), "aggregate_id", `""`))
	order("aggregate-id-before-event-type", withAll(withAll(baseMembers(), "aggregate_id", `" "`), "event_type", `""`))
	order("event-type-before-event-version", withAll(withAll(baseMembers(), "event_type", `" "`), "event_version", `0`))
	order("event-version-before-aggregate-format", withAll(withAll(baseMembers(), "aggregate_id", `"bad id"`), "event_version", `0`))
	order("payload-before-aggregate-format", withAll(withAll(baseMembers()[:5], "aggregate_id", `"bad id"`), "event_type", `"T"`))
	order("type-error-beats-validation", withAll(withAll(baseMembers(), "event_id", `""`), "tenant_id", `5`))
	order("time-error-beats-validation", withAll(withAll(baseMembers(), "event_id", `""`), "timestamp", `"yesterday"`))
	order("everything-missing", nil)
	return cases
}

type aggregateCase struct {
	name    string
	value   []byte
	headers [][2][]byte
	key     []byte
}

func h(name, value string) [2][]byte { return [2][]byte{[]byte(name), []byte(value)} }

func aggregateCases() []aggregateCase {
	valid := []byte(render(baseMembers()))
	padded := []byte(with("aggregate_id", `" order-1 "`))
	invalid := []byte(with("event_version", `0`))
	none := [][2][]byte{}
	return []aggregateCase{
		{"envelope-first", valid, [][2][]byte{h("X-Aggregate-ID", "from-header")}, []byte("from-key")},
		{"envelope-untrimmed", padded, none, []byte("from-key")},
		{"invalid-envelope-falls-to-header", invalid, [][2][]byte{h("X-Aggregate-ID", "from-header")}, []byte("from-key")},
		{"not-json-falls-to-header", []byte("not json"), [][2][]byte{h("X-Aggregate-ID", "from-header")}, nil},
		{"header-x-aggregate-id", nil, [][2][]byte{h("X-Aggregate-ID", "h1")}, nil},
		{"header-lower-x-aggregate-id", nil, [][2][]byte{h("x-aggregate-id", "h2")}, nil},
		{"header-aggregate-id", nil, [][2][]byte{h("Aggregate-ID", "h3")}, nil},
		{"header-lower-aggregate-id", nil, [][2][]byte{h("aggregate-id", "h4")}, nil},
		{"header-upper-case-is-not-read", nil, [][2][]byte{h("X-AGGREGATE-ID", "h5")}, []byte("from-key")},
		{"header-other-case-is-not-read", nil, [][2][]byte{h("x-Aggregate-Id", "h6")}, nil},
		{"header-order-of-names", nil, [][2][]byte{h("aggregate-id", "h4"), h("Aggregate-ID", "h3"), h("x-aggregate-id", "h2"), h("X-Aggregate-ID", "h1")}, nil},
		{"header-invalid-then-next-name", nil, [][2][]byte{h("X-Aggregate-ID", "bad id"), h("x-aggregate-id", "h2")}, nil},
		{"header-blank-then-next-name", nil, [][2][]byte{h("X-Aggregate-ID", "  "), h("Aggregate-ID", "h3")}, nil},
		{"header-trimmed", nil, [][2][]byte{h("X-Aggregate-ID", " \th1\n ")}, nil},
		{"header-nbsp-trimmed", nil, [][2][]byte{h("X-Aggregate-ID", "\u00a0h1\u00a0")}, nil},
		{"header-duplicate-last-wins", nil, [][2][]byte{h("X-Aggregate-ID", "first"), h("X-Aggregate-ID", "second")}, nil},
		{"header-duplicate-last-invalid", nil, [][2][]byte{h("X-Aggregate-ID", "first"), h("X-Aggregate-ID", "bad id")}, []byte("from-key")},
		{"header-not-utf8", nil, [][2][]byte{{[]byte("X-Aggregate-ID"), []byte("h\xff")}}, []byte("from-key")},
		{"header-too-long", nil, [][2][]byte{h("X-Aggregate-ID", strings.Repeat("a", 257))}, []byte("from-key")},
		{"header-empty-falls-to-key", []byte{}, [][2][]byte{h("X-Aggregate-ID", "")}, []byte("from-key")},
		{"key", []byte("x"), none, []byte("order-9")},
		{"key-trimmed", []byte("x"), none, []byte("  order-9\t")},
		{"key-invalid", []byte("x"), none, []byte("order 9")},
		{"key-blank", []byte("x"), none, []byte("   ")},
		{"key-empty", []byte("x"), none, []byte{}},
		{"key-absent", []byte("x"), none, nil},
		{"key-not-utf8", []byte("x"), none, []byte("k\xff")},
		{"key-too-long", []byte("x"), none, []byte(strings.Repeat("k", 257))},
		{"key-256", []byte("x"), none, []byte(strings.Repeat("k", 256))},
		{"nothing", []byte{}, none, nil},
	}
}
