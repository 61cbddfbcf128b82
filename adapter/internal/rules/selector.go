package rules

import (
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
)

// Matcher is one PromQL label matcher.
type Matcher struct {
	Label, Op, Value string // Op is =, !=, =~ or !~
}

func (m Matcher) String() string { return QuoteLabel(m.Label) + m.Op + Quote(m.Value) }

// Quote writes s as a PromQL string literal. strconv.Quote escapes what Go
// needs, but leaves U+FFFD as the character, and Prometheus' lexer refuses
// that character in a query ("invalid UTF-8 rune": it cannot tell it from a
// decoding error); it is escaped as \uFFFD, which Prometheus reads back as
// the same character. Found by FuzzSelectorStaysInsideItsMatchers.
func Quote(s string) string {
	return strings.ReplaceAll(strconv.Quote(s), "\uFFFD", `\uFFFD`)
}

// JoinMatchers renders matchers as the inside of a PromQL selector's braces.
func JoinMatchers(ms []Matcher) string {
	parts := make([]string, len(ms))
	for i, m := range ms {
		parts[i] = m.String()
	}
	return strings.Join(parts, ",")
}

var legacyName = regexp.MustCompile(`^[a-zA-Z_:][a-zA-Z0-9_:]*$`)
var legacyLabel = regexp.MustCompile(`^[a-zA-Z_][a-zA-Z0-9_]*$`)

// IsLegacyName reports whether a metric name can be written bare in PromQL.
func IsLegacyName(name string) bool { return legacyName.MatchString(name) }

// QuoteLabel writes a label name as PromQL needs it: bare when it is a
// classic identifier, quoted otherwise (Prometheus 3 allows any UTF-8
// label name, such as app.kubernetes.io/name, in quotes).
func QuoteLabel(l string) string {
	if legacyLabel.MatchString(l) {
		return l
	}
	return Quote(l)
}

// Selector writes a series selector: name{matchers}, or with a name that
// is not a classic identifier {"name", matchers}.
func Selector(name string, ms []Matcher) string {
	if IsLegacyName(name) {
		return name + "{" + JoinMatchers(ms) + "}"
	}
	inner := Quote(name)
	if len(ms) > 0 {
		inner += "," + JoinMatchers(ms)
	}
	return "{" + inner + "}"
}

var seriesRE = regexp.MustCompile(`^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*(?:\{(.*)\})?\s*$`)
var matcherRE = regexp.MustCompile(`^\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$`)

// SeriesQuery is a parsed series selector.
type SeriesQuery struct {
	Name     string
	Matchers []Matcher
}

// ParseSeriesQuery checks a series selector such as
// flask_http_request_total{namespace!="",pod!=""}.
func ParseSeriesQuery(q string) (SeriesQuery, error) {
	m := seriesRE.FindStringSubmatch(q)
	if m == nil {
		return SeriesQuery{}, fmt.Errorf("%q is not a series selector like name{label=\"value\"}", q)
	}
	sq := SeriesQuery{Name: m[1]}
	if strings.TrimSpace(m[2]) != "" {
		for _, part := range splitMatchers(m[2]) {
			if strings.TrimSpace(part) == "" {
				continue
			}
			mm := matcherRE.FindStringSubmatch(part)
			if mm == nil {
				return SeriesQuery{}, fmt.Errorf("%q: %q is not a label matcher like label=\"value\"", q, strings.TrimSpace(part))
			}
			val, err := strconv.Unquote(`"` + mm[3] + `"`)
			if err != nil {
				return SeriesQuery{}, fmt.Errorf("%q: %v", q, err)
			}
			sq.Matchers = append(sq.Matchers, Matcher{mm[1], mm[2], val})
		}
	}
	if sq.Name == "" && len(sq.Matchers) == 0 {
		return SeriesQuery{}, fmt.Errorf("%q selects nothing", q)
	}
	return sq, nil
}

// splitMatchers splits on commas outside quotes.
func splitMatchers(s string) []string {
	var out []string
	inQuote, esc, start := false, false, 0
	for i, c := range s {
		switch {
		case esc:
			esc = false
		case c == '\\':
			esc = true
		case c == '"':
			inQuote = !inQuote
		case c == ',' && !inQuote:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// SelectorMatchers turns a Kubernetes label selector (an HPA's metric
// selector) into PromQL matchers.
func SelectorMatchers(sel labels.Selector) ([]Matcher, error) {
	if sel == nil {
		return nil, nil
	}
	reqs, selectable := sel.Requirements()
	if !selectable {
		return nil, fmt.Errorf("metric selector %q can never match", sel.String())
	}
	var out []Matcher
	for _, req := range reqs {
		vals := req.Values().List()
		sort.Strings(vals)
		quoted := make([]string, len(vals))
		for i, v := range vals {
			quoted[i] = regexp.QuoteMeta(v)
		}
		switch req.Operator() {
		case selection.Equals, selection.DoubleEquals:
			out = append(out, Matcher{req.Key(), "=", vals[0]})
		case selection.NotEquals:
			out = append(out, Matcher{req.Key(), "!=", vals[0]})
		case selection.In:
			out = append(out, Matcher{req.Key(), "=~", strings.Join(quoted, "|")})
		case selection.NotIn:
			out = append(out, Matcher{req.Key(), "!~", strings.Join(quoted, "|")})
		case selection.Exists:
			out = append(out, Matcher{req.Key(), "!=", ""})
		case selection.DoesNotExist:
			out = append(out, Matcher{req.Key(), "=", ""})
		default:
			return nil, fmt.Errorf("metric selector operator %q is not supported", req.Operator())
		}
	}
	return out, nil
}
