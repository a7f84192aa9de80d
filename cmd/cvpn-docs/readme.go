package main

import (
	"errors"
	"strings"
)

// endpointHeading is the README section that is the endpoint file's reference.
const endpointHeading = "## The endpoint file"

// endpointReference is the README's configuration reference: the paragraphs before the table
// of keys, its rows, and the paragraphs after it (what a reload does). Text is Markdown.
type endpointReference struct {
	Intro  []string
	Keys   []keyRow
	Reload []string
}

// keyRow is one row of the table: key | default | AWS counterpart | meaning.
type keyRow struct {
	Key, Default, AWS, Meaning string
}

// parseEndpointReference finds the section "The endpoint file" in a README and splits it into
// paragraphs and the table's rows.
func parseEndpointReference(readme string) (endpointReference, error) {
	var ref endpointReference
	_, section, ok := strings.Cut(readme, "\n"+endpointHeading+"\n")
	if !ok {
		return ref, errors.New("no section \"" + strings.TrimPrefix(endpointHeading, "## ") + "\"")
	}
	if end := strings.Index(section, "\n## "); end >= 0 {
		section = section[:end]
	}
	var para []string
	flush := func() {
		if len(para) == 0 {
			return
		}
		p := strings.Join(para, " ")
		if ref.Keys == nil {
			ref.Intro = append(ref.Intro, p)
		} else {
			ref.Reload = append(ref.Reload, p)
		}
		para = nil
	}
	header := true
	for _, line := range strings.Split(section, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case strings.HasPrefix(line, "|"):
			flush()
			cells := splitRow(line)
			if header || isRule(cells) {
				header = false
				continue
			}
			if len(cells) != 4 {
				return ref, errors.New("a row of the table of keys has not 4 cells: " + line)
			}
			ref.Keys = append(ref.Keys, keyRow{cells[0], cells[1], cells[2], cells[3]})
		case line == "":
			flush()
		default:
			para = append(para, line)
		}
	}
	flush()
	if len(ref.Keys) == 0 {
		return ref, errors.New("the section has no table of keys")
	}
	return ref, nil
}

// splitRow splits a Markdown table row into its cells at the pipes that are not escaped (\|)
// and not inside a code span.
func splitRow(line string) []string {
	line = strings.TrimSuffix(strings.TrimPrefix(line, "|"), "|")
	var cells []string
	var cell strings.Builder
	code := false
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case c == '\\' && i+1 < len(line) && line[i+1] == '|':
			cell.WriteByte('|')
			i++
		case c == '`':
			code = !code
			cell.WriteByte(c)
		case c == '|' && !code:
			cells = append(cells, strings.TrimSpace(cell.String()))
			cell.Reset()
		default:
			cell.WriteByte(c)
		}
	}
	return append(cells, strings.TrimSpace(cell.String()))
}

// isRule reports whether cells are the table's |---|---| line.
func isRule(cells []string) bool {
	for _, c := range cells {
		if strings.Trim(c, "-: ") != "" {
			return false
		}
	}
	return true
}
