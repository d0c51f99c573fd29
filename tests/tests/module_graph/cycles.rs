//! Loops in a directed graph given as adjacency lists, node `n`'s successors in `adjacency[n]`:
//! its strongly connected components (Tarjan) and a shortest loop inside each. Pure
//! graph algorithms on indices; what the nodes are, and how a loop is reported, is `graph`'s.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// Tarjan's strongly connected components, each sorted.
pub fn strongly_connected(adjacency: &[Vec<usize>]) -> Vec<Vec<usize>> {
    struct Tarjan<'a> {
        adjacency: &'a [Vec<usize>],
        index: Vec<Option<usize>>,
        low: Vec<usize>,
        on_stack: Vec<bool>,
        stack: Vec<usize>,
        next: usize,
        components: Vec<Vec<usize>>,
    }

    fn visit(state: &mut Tarjan, v: usize) {
        state.index[v] = Some(state.next);
        state.low[v] = state.next;
        state.next += 1;
        state.stack.push(v);
        state.on_stack[v] = true;
        let adjacency = state.adjacency;
        for &w in &adjacency[v] {
            match state.index[w] {
                None => {
                    visit(state, w);
                    state.low[v] = state.low[v].min(state.low[w]);
                }
                Some(index) if state.on_stack[w] => state.low[v] = state.low[v].min(index),
                Some(_) => {}
            }
        }
        if state.index[v] == Some(state.low[v]) {
            let mut component = Vec::new();
            while let Some(w) = state.stack.pop() {
                state.on_stack[w] = false;
                component.push(w);
                if w == v {
                    break;
                }
            }
            component.sort_unstable();
            state.components.push(component);
        }
    }

    let n = adjacency.len();
    let mut state = Tarjan {
        adjacency,
        index: vec![None; n],
        low: vec![0; n],
        on_stack: vec![false; n],
        stack: Vec::new(),
        next: 0,
        components: Vec::new(),
    };
    for v in 0..n {
        if state.index[v].is_none() {
            visit(&mut state, v);
        }
    }
    state.components.sort();
    state.components
}

/// A shortest loop inside `component`, as `[a, b, …, a]`; ties go to the smallest start.
pub fn shortest_loop(adjacency: &[Vec<usize>], component: &[usize]) -> Vec<usize> {
    let inside: BTreeSet<usize> = component.iter().copied().collect();
    let mut best: Option<Vec<usize>> = None;
    for &start in component {
        let mut previous: BTreeMap<usize, usize> = BTreeMap::new();
        let mut queue = VecDeque::from([start]);
        let mut last = None;
        'search: while let Some(v) = queue.pop_front() {
            for &w in adjacency[v].iter().filter(|w| inside.contains(w)) {
                if w == start {
                    last = Some(v);
                    break 'search;
                }
                if let Entry::Vacant(entry) = previous.entry(w) {
                    entry.insert(v);
                    queue.push_back(w);
                }
            }
        }
        let Some(mut v) = last else { continue };
        let mut cycle = vec![start, v];
        while v != start {
            v = previous[&v];
            cycle.push(v);
        }
        cycle.reverse();
        if best.as_ref().is_none_or(|best| cycle.len() < best.len()) {
            best = Some(cycle);
        }
    }
    best.unwrap_or_default()
}

#[test]
fn tarjan_finds_the_loop_and_a_shortest_way_around_it() {
    // 0 -> 1 -> 2 -> 0, 2 -> 1, 2 -> 3, 3 -> 4 -> 3, 5 alone.
    let adjacency = [vec![1], vec![2], vec![0, 1, 3], vec![4], vec![3], vec![]];
    let components: Vec<Vec<usize>> = strongly_connected(&adjacency)
        .into_iter()
        .filter(|component| component.len() > 1)
        .collect();
    assert_eq!(components, [vec![0, 1, 2], vec![3, 4]]);
    assert_eq!(shortest_loop(&adjacency, &components[0]), [1, 2, 1]);
    assert_eq!(shortest_loop(&adjacency, &components[1]), [3, 4, 3]);
}
