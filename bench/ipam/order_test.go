package ipam

import "testing"

// In order's rounds every kind runs once per round, once in each position,
// and right after every other kind exactly once.
func TestOrder(t *testing.T) {
	for _, n := range []int{2, 4, 6, 8} {
		rows := order(n)
		if len(rows) != n {
			t.Fatalf("order(%d) has %d rounds", n, len(rows))
		}
		after := map[[2]int]int{}
		for r, row := range rows {
			seen := map[int]bool{}
			for i, k := range row {
				if k < 0 || k >= n || seen[k] {
					t.Fatalf("order(%d) round %d is %v: not each kind once", n, r, row)
				}
				seen[k] = true
				if i > 0 {
					after[[2]int{row[i-1], k}]++
				}
			}
		}
		for pos := range n {
			seen := map[int]bool{}
			for _, row := range rows {
				seen[row[pos]] = true
			}
			if len(seen) != n {
				t.Errorf("order(%d): position %d holds %d kinds over the rounds; want %d", n, pos, len(seen), n)
			}
		}
		for a := range n {
			for b := range n {
				if want := map[bool]int{true: 0, false: 1}[a == b]; after[[2]int{a, b}] != want {
					t.Errorf("order(%d): kind %d runs right after kind %d %d times; want %d", n, b, a, after[[2]int{a, b}], want)
				}
			}
		}
	}
}
