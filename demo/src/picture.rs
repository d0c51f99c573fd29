//! What the demo desktop shows: colour bars that scroll one step per frame, a frame counter, the last key
//! typed and a cross at the pointer, so a viewer sees at once that pixels flow and input arrives.

use crate::state::InputState;

/// Width of one colour bar, in pixels.
const BAR: usize = 40;
/// Glyphs are 3x5 cells drawn this many pixels wide.
const SCALE: usize = 4;

const COLOURS: [[u8; 3]; 8] = [
    [235, 235, 235],
    [235, 235, 16],
    [16, 235, 235],
    [16, 235, 16],
    [235, 16, 235],
    [235, 16, 16],
    [16, 16, 235],
    [16, 16, 16],
];

/// An RGB framebuffer.
pub struct Picture {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<[u8; 3]>,
}

impl Picture {
    pub fn new(width: usize, height: usize) -> Self {
        Self {
            width,
            height,
            pixels: vec![[0; 3]; width * height],
        }
    }

    /// Redraws the whole picture for `frame` and the current input.
    pub fn render(&mut self, frame: u64, input: &InputState) {
        let shift = (frame as usize * 4) % (BAR * COLOURS.len());
        for y in 0..self.height {
            let row = &mut self.pixels[y * self.width..(y + 1) * self.width];
            for (x, pixel) in row.iter_mut().enumerate() {
                let bar = ((x + shift) / BAR) % COLOURS.len();
                let shade = (y * 160 / self.height.max(1)) as u8;
                *pixel = COLOURS[bar].map(|c| c.saturating_sub(shade));
            }
        }
        self.fill(0, 0, self.width, 3 * 6 * SCALE + 8, [24, 24, 48]);
        self.text(4, 4, "DESKBROKER DEMO DESKTOP");
        self.text(4, 4 + 6 * SCALE, &format!("FRAME {frame}"));
        let key = match input.last_key {
            Some(key) if (0x20..0x7f).contains(&key) => {
                format!("KEY {key:04X} {}", char::from(key as u8))
            }
            Some(key) => format!("KEY {key:04X}"),
            None => "KEY -".to_owned(),
        };
        self.text(4, 4 + 12 * SCALE, &key);
        self.cross(
            usize::from(input.x),
            usize::from(input.y),
            input.buttons != 0,
        );
    }

    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, colour: [u8; 3]) {
        for row in y..(y + h).min(self.height) {
            for col in x..(x + w).min(self.width) {
                self.pixels[row * self.width + col] = colour;
            }
        }
    }

    fn text(&mut self, x: usize, y: usize, text: &str) {
        for (i, c) in text.chars().enumerate() {
            let Some(rows) = glyph(c.to_ascii_uppercase()) else {
                continue;
            };
            for (row, bits) in rows.iter().enumerate() {
                for col in 0..3 {
                    if bits & (0b100 >> col) != 0 {
                        let gx = x + i * 4 * SCALE + col * SCALE;
                        self.fill(gx, y + row * SCALE, SCALE, SCALE, [255, 255, 255]);
                    }
                }
            }
        }
    }

    /// A cross at the pointer, red while a button is down.
    fn cross(&mut self, x: usize, y: usize, pressed: bool) {
        let colour = if pressed { [255, 0, 0] } else { [0, 0, 0] };
        self.fill(x.saturating_sub(10), y, 21, 2, colour);
        self.fill(x, y.saturating_sub(10), 2, 21, colour);
    }
}

/// A 3x5 glyph: five rows of three bits, most significant bit leftmost.
fn glyph(c: char) -> Option<[u8; 5]> {
    let rows = match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 2, 2],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [3, 4, 4, 4, 3],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [3, 4, 5, 5, 3],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'J' => [1, 1, 1, 5, 2],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [2, 5, 5, 5, 2],
        'P' => [6, 5, 6, 4, 4],
        'Q' => [2, 5, 5, 6, 3],
        'R' => [6, 5, 6, 5, 5],
        'S' => [3, 4, 2, 1, 6],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        'Z' => [7, 1, 2, 4, 7],
        '-' => [0, 0, 7, 0, 0],
        ':' => [0, 2, 0, 2, 0],
        '.' => [0, 0, 0, 0, 2],
        '/' => [1, 1, 2, 4, 4],
        _ => return None,
    };
    Some(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_picture_moves_and_shows_input() {
        let mut picture = Picture::new(320, 200);
        let idle = InputState::default();
        picture.render(0, &idle);
        let first = picture.pixels.clone();
        picture.render(1, &idle);
        assert_ne!(first, picture.pixels, "the pattern moves");
        let before = picture.pixels.clone();
        picture.render(
            1,
            &InputState {
                last_key: Some(0x61),
                x: 100,
                y: 150,
                buttons: 1,
            },
        );
        assert_ne!(before, picture.pixels, "input is visible");
        assert_eq!(
            picture.pixels[150 * 320 + 100],
            [255, 0, 0],
            "a red cross under the pressed pointer"
        );
    }
}
