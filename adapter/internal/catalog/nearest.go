package catalog

import (
	"sort"
	"strings"
)

// Nearest returns up to n of names closest to name by edit distance, the
// closest first, leaving out those too far to be a plausible typo or
// variant: what an unknown metric name was probably meant to be
// (flask_http_request_total → flask_http_request_per_second).
func Nearest(name string, names []string, n int) []string {
	type scored struct {
		name string
		d    int
	}
	var out []scored
	for _, c := range names {
		d := distance(name, c)
		// A shared prefix of the name's first part counts for a lot:
		// metrics are named family_unit_suffix.
		limit := max(len(name), len(c)) / 2
		if d <= limit || commonPrefix(name, c) >= min(len(name), len(c))/2 {
			out = append(out, scored{c, d})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].d < out[j].d || (out[i].d == out[j].d && out[i].name < out[j].name) })
	var names2 []string
	for i := 0; i < len(out) && i < n; i++ {
		names2 = append(names2, out[i].name)
	}
	return names2
}

func commonPrefix(a, b string) int {
	n := 0
	for n < len(a) && n < len(b) && a[n] == b[n] {
		n++
	}
	return n
}

// distance is the Levenshtein distance, case-insensitive.
func distance(a, b string) int {
	a, b = strings.ToLower(a), strings.ToLower(b)
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
