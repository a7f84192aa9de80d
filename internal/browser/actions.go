package browser

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/chromedp"
)

// maxImageBytes bounds what ImageBytes returns: a QR code is a few KiB.
const maxImageBytes = 8 << 20

// run runs a with the Browser's per-action timeout and fails the test,
// naming what was being done, the page and a screenshot, if a fails.
func run[T any](b *Browser, what string, a chromedp.Action[T]) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, b.timeout)
	defer cancel()
	v, err := chromedp.Run(ctx, a)
	if err != nil {
		b.fail(what, err)
	}
	return v
}

// fail ends the test with what was being done, why it failed, where the
// page was and a screenshot of it.
func (b *Browser) fail(what string, err error) {
	b.t.Helper()
	if errors.Is(err, context.DeadlineExceeded) {
		if err.Error() == context.DeadlineExceeded.Error() {
			err = fmt.Errorf("timed out after %v", b.timeout)
		} else {
			err = fmt.Errorf("timed out after %v: %w", b.timeout, err)
		}
	}
	ctx, cancel := context.WithTimeout(b.ctx, 5*time.Second)
	defer cancel()
	loc, lerr := chromedp.Run(ctx, chromedp.Location())
	if lerr != nil {
		loc = "(unknown: " + lerr.Error() + ")"
	}
	shot, serr := b.saveScreenshot(ctx, "failure")
	if serr != nil {
		shot = "(none: " + serr.Error() + ")"
	}
	b.t.Fatalf("browser: %s: %v\n\tpage: %s\n\tscreenshot: %s", what, err, loc, shot)
}

// Navigate opens url in the tab and waits until the page has loaded. It
// fails the test if the page cannot be loaded, for example for a TLS
// certificate that the browser does not trust.
func (b *Browser) Navigate(url string) {
	b.t.Helper()
	run(b, fmt.Sprintf("navigate to %s", url), chromedp.Navigate(url))
}

// TryNavigate is Navigate that returns the error (for example
// "page load error net::ERR_CERT_AUTHORITY_INVALID") instead of failing the
// test, for tests of what must not load.
func (b *Browser) TryNavigate(url string) error {
	ctx, cancel := context.WithTimeout(b.ctx, b.timeout)
	defer cancel()
	return chromedp.Do(ctx, chromedp.Navigate(url))
}

// Fill waits until the input or textarea that selector (CSS) finds is
// visible, clears it and types value into it, key by key, as a person
// would (so maxlength and the input's events apply).
func (b *Browser) Fill(selector, value string) {
	b.t.Helper()
	sel := chromedp.CSS(selector)
	quoted, _ := json.Marshal(selector) // a string always marshals
	run(b, fmt.Sprintf("fill %q", selector), chromedp.Steps(
		chromedp.WaitVisible(sel),
		chromedp.Evaluate[chromedp.Void](fmt.Sprintf(clearJS, quoted)),
		chromedp.SendKeys(sel, value),
	))
}

// clearJS empties the value of the element that the selector (a JSON
// string) finds.
const clearJS = `(function(sel) {
	const e = document.querySelector(sel);
	if (e === null) { throw new Error("no element matches"); }
	if (!("value" in e)) { throw new Error("<" + e.tagName.toLowerCase() + "> has no value to fill"); }
	e.value = "";
})(%s)`

// Click waits until the element that selector (CSS) finds is visible and
// clicks it. It does not wait for any page that the click leads to: use
// Submit for that, or WaitVisible on the next page.
func (b *Browser) Click(selector string) {
	b.t.Helper()
	run(b, fmt.Sprintf("click %q", selector), chromedp.Click(chromedp.CSS(selector)))
}

// Submit clicks the element that selector (CSS) finds, a form's submit
// button or a link, and waits until the page that it leads to has loaded.
// A click that leads to no new page (a download, a script) times out.
func (b *Browser) Submit(selector string) {
	b.t.Helper()
	run(b, fmt.Sprintf("submit with %q", selector), func(ctx context.Context, t *chromedp.Target) (chromedp.Void, error) {
		_, err := chromedp.RunResponse(ctx, chromedp.Click(chromedp.CSS(selector)))
		return chromedp.Void{}, err
	})
}

// WaitVisible waits until the element that selector (CSS) finds is on the
// page and visible.
func (b *Browser) WaitVisible(selector string) {
	b.t.Helper()
	run(b, fmt.Sprintf("wait for %q to be visible", selector), chromedp.WaitVisible(chromedp.CSS(selector)))
}

// Text waits until the element that selector (CSS) finds is visible and
// returns its rendered text (innerText).
func (b *Browser) Text(selector string) string {
	b.t.Helper()
	return run(b, fmt.Sprintf("read the text of %q", selector), chromedp.Text(chromedp.CSS(selector), chromedp.NodeVisible))
}

// Location returns the address of the page in the tab.
func (b *Browser) Location() string {
	b.t.Helper()
	return run(b, "read the location", chromedp.Location())
}

// ImageBytes waits until the <img> that selector (CSS) finds has loaded and
// returns the bytes of its image as the page received them: from a data:
// URL, or from the browser's copy of the resource (it does not fetch the
// image again, which for a one-time image would fetch another one).
func (b *Browser) ImageBytes(selector string) []byte {
	b.t.Helper()
	return run(b, fmt.Sprintf("read the image %q", selector), imageBytes(selector))
}

// imageJS returns the loaded source of the <img> that the selector (a JSON
// string) finds, or "" while it loads.
const imageJS = `(function(sel) {
	const e = document.querySelector(sel);
	if (e === null) { throw new Error("no element matches"); }
	if (e.tagName !== "IMG") { throw new Error("element is <" + e.tagName.toLowerCase() + ">, not <img>"); }
	return (e.complete && e.naturalWidth > 0) ? e.currentSrc : "";
})(%s)`

// imageBytes is the action of ImageBytes.
func imageBytes(selector string) chromedp.Action[[]byte] {
	return func(ctx context.Context, t *chromedp.Target) ([]byte, error) {
		if _, err := chromedp.WaitVisible(chromedp.CSS(selector))(ctx, t); err != nil {
			return nil, err
		}
		quoted, err := json.Marshal(selector)
		if err != nil {
			return nil, err
		}
		var src string
		for src == "" {
			if src, err = chromedp.Evaluate[string](fmt.Sprintf(imageJS, quoted))(ctx, t); err != nil {
				return nil, err
			}
			if src != "" {
				break
			}
			select { // the image is still loading; look again
			case <-ctx.Done():
				return nil, fmt.Errorf("image did not load: %w", ctx.Err())
			case <-time.After(50 * time.Millisecond):
			}
		}
		if strings.HasPrefix(src, "data:") {
			return decodeDataURL(src)
		}
		tree, err := cdp.Call(ctx, t, page.GetFrameTree, cdp.Empty{})
		if err != nil {
			return nil, fmt.Errorf("frame tree: %w", err)
		}
		if tree.FrameTree == nil || tree.FrameTree.Frame == nil {
			return nil, errors.New("frame tree: no main frame")
		}
		res, err := cdp.Call(ctx, t, page.GetResourceContent, page.GetResourceContentParams{
			FrameID: tree.FrameTree.Frame.ID, URL: src,
		})
		if err != nil {
			return nil, fmt.Errorf("content of %s: %w", src, err)
		}
		if len(res.Content) > maxImageBytes {
			return nil, fmt.Errorf("image %s is %d bytes, over %d", src, len(res.Content), maxImageBytes)
		}
		return res.Content, nil
	}
}

// decodeDataURL returns the bytes of a data: URL (RFC 2397).
func decodeDataURL(src string) ([]byte, error) {
	if len(src) > 2*maxImageBytes {
		return nil, fmt.Errorf("data URL of %d bytes is over %d", len(src), 2*maxImageBytes)
	}
	meta, data, ok := strings.Cut(strings.TrimPrefix(src, "data:"), ",")
	if !ok {
		return nil, errors.New("data URL without a comma")
	}
	if strings.HasSuffix(meta, ";base64") {
		b, err := base64.StdEncoding.DecodeString(data)
		if err != nil {
			return nil, fmt.Errorf("data URL: %w", err)
		}
		return b, nil
	}
	s, err := url.PathUnescape(data)
	if err != nil {
		return nil, fmt.Errorf("data URL: %w", err)
	}
	return []byte(s), nil
}
