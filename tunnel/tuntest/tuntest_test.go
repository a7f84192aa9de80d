package tuntest

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"
)

func bufs(n, size int) ([][]byte, []int) {
	b := make([][]byte, n)
	for i := range b {
		b[i] = make([]byte, size)
	}
	return b, make([]int, n)
}

// Packets injected into a queue come out of that queue's Read, in order, at the offset asked,
// in batches of at most len(bufs).
func TestInjectRead(t *testing.T) {
	d := New(2)
	defer d.Close()
	var pkts [][]byte
	for i := range 10 {
		pkts = append(pkts, []byte(fmt.Sprint("packet", i)))
	}
	if k := d.Queue(1).Inject(pkts...); k != 10 {
		t.Fatalf("Inject queued %d", k)
	}
	b, sizes := bufs(4, 64)
	var got []string
	for len(got) < 10 {
		k, err := d.Queue(1).Read(b, sizes, 16)
		if err != nil || k == 0 || k > 4 {
			t.Fatalf("Read: %d, %v", k, err)
		}
		for i := range k {
			got = append(got, string(b[i][16:16+sizes[i]]))
		}
	}
	if fmt.Sprint(got) != fmt.Sprint([]string{"packet0", "packet1", "packet2", "packet3", "packet4", "packet5", "packet6", "packet7", "packet8", "packet9"}) {
		t.Fatalf("read %q", got)
	}
	// Queue 0 got nothing: a read there waits until Close.
	done := make(chan error, 1)
	go func() {
		_, err := d.Queue(0).Read(b, sizes, 0)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Read of an empty queue returned %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	d.Queue(0).Close()
	if err := <-done; !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Read after Close: %v", err)
	}
}

// A producer faster than the reader waits for room; nothing is lost.
func TestInjectWaitsForRoom(t *testing.T) {
	d := New(1)
	defer d.Close()
	q := d.Queue(0)
	const total = 3 * SlotCount
	var wg sync.WaitGroup
	for p := range 3 {
		wg.Go(func() {
			pkt := make([]byte, 100)
			for i := range SlotCount {
				pkt[0], pkt[1], pkt[2] = byte(p), byte(i), byte(i>>8)
				if q.Inject(pkt) != 1 {
					t.Error("Inject refused")
					return
				}
			}
		})
	}
	b, sizes := bufs(BatchSize, 128)
	next := make([]int, 3)
	for got := 0; got < total; {
		k, err := q.Read(b, sizes, 0)
		if err != nil {
			t.Fatal(err)
		}
		for i := range k {
			p, seq := int(b[i][0]), int(b[i][1])|int(b[i][2])<<8
			if sizes[i] != 100 || seq != next[p] {
				t.Fatalf("producer %d's packet %d (size %d), want %d", p, seq, sizes[i], next[p])
			}
			next[p]++
		}
		got += k
	}
	wg.Wait()
}

// Writes are counted per device and seen by the sink without the offset.
func TestWriteSink(t *testing.T) {
	d := New(2)
	defer d.Close()
	var seen []string
	d.SetSink(func(q int, pkt []byte) { seen = append(seen, fmt.Sprint(q, string(pkt))) })
	if k, err := d.Queue(1).Write([][]byte{[]byte("xxa"), []byte("xxb")}, 2); k != 2 || err != nil {
		t.Fatalf("Write: %d, %v", k, err)
	}
	d.SetSink(nil)
	var counted []string
	d.SetCounter(func(q, n int) { counted = append(counted, fmt.Sprint(q, ":", n)) })
	d.Queue(0).Write([][]byte{[]byte("c")}, 0)
	d.Queue(1).Write([][]byte{[]byte("d"), []byte("e"), []byte("f")}, 0)
	d.SetCounter(nil)
	d.Queue(1).Write([][]byte{[]byte("g")}, 0)
	if fmt.Sprint(seen) != "[1a 1b]" || fmt.Sprint(counted) != "[0:1 1:3]" || d.Written() != 7 {
		t.Fatalf("sink saw %q, counter %q, %d written", seen, counted, d.Written())
	}
	d.Close()
	if _, err := d.Queue(1).Write([][]byte{[]byte("d")}, 0); !errors.Is(err, os.ErrClosed) {
		t.Fatalf("Write after Close: %v", err)
	}
	if k := d.Queue(1).Inject([]byte("e")); k != 0 {
		t.Fatalf("Inject after Close queued %d", k)
	}
	if _, ok := <-d.Queue(0).Events(); !ok {
		t.Fatal("no EventUp")
	}
	if _, ok := <-d.Queue(0).Events(); ok {
		t.Fatal("events not closed")
	}
}
